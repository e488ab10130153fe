/* lstm-edge test firmware: C runtime start (copy .data, zero .bss, run main, exit through semihosting)
 * and, on Cortex-M, the vector table. RISC-V enters through _start in startup_riscv.S. */
#include <stdint.h>

#include "semihosting.h"

extern uint32_t __data_load[], __data_start[], __data_end[], __bss_start[], __bss_end[], __stack_top[];
int main(void);
void lstm_edge_start(void);
void lstm_edge_fault(void);

void lstm_edge_start(void)
{
    const uint32_t *src = __data_load;
    uint32_t *dst;
    for (dst = __data_start; dst < __data_end; ++dst) {
        *dst = *src++;
    }
    for (dst = __bss_start; dst < __bss_end; ++dst) {
        *dst = 0;
    }
    sh_exit(main());
}

/* Any exception (a HardFault from an unaligned access on ARMv6-M, a bad address...) ends the run. */
void lstm_edge_fault(void)
{
    sh_write0("lstm-edge firmware: fault\n");
    sh_exit(70);
}

#if defined(__arm__)
void lstm_edge_reset(void);

void lstm_edge_reset(void)
{
#if defined(LSTM_EDGE_TRAP_UNALIGNED)
    /* CCR.UNALIGN_TRP: an unaligned halfword or word access faults, as it always does on ARMv6-M
     * (QEMU 7.2 does not model that fault on its Cortex-M0, but honours this bit on ARMv7-M). */
    *(volatile uint32_t *)0xE000ED14u |= 1u << 3;
#endif
    lstm_edge_start();
}

/* Initial stack pointer, reset, then NMI .. SysTick all trapping into lstm_edge_fault. */
__attribute__((section(".vectors"), used)) static const uintptr_t vectors[16] = {
    (uintptr_t)__stack_top, (uintptr_t)lstm_edge_reset,
    (uintptr_t)lstm_edge_fault, (uintptr_t)lstm_edge_fault, (uintptr_t)lstm_edge_fault,
    (uintptr_t)lstm_edge_fault, (uintptr_t)lstm_edge_fault, (uintptr_t)lstm_edge_fault,
    0, 0, 0, (uintptr_t)lstm_edge_fault, (uintptr_t)lstm_edge_fault, 0,
    (uintptr_t)lstm_edge_fault, (uintptr_t)lstm_edge_fault,
};
#endif
