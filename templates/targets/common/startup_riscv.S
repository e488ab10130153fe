/* lstm-edge test firmware for RISC-V (machine mode, -bios none): entry point, trap vector and the
 * semihosting trap. */
    .section .text.start, "ax"
    .global _start
_start:
    .option push
    .option norelax
    la gp, __global_pointer$
    .option pop
    la sp, __stack_top
    la t0, trap_entry
    .option push
    .option arch, +zicsr
    csrw mtvec, t0
    .option pop
    call lstm_edge_start
1:  j 1b

    .balign 4
trap_entry:
    la sp, __stack_top
    call lstm_edge_fault
2:  j 2b

/* int32_t lstm_edge_semihost_trap(int32_t op, const uint32_t *args): a0 = op, a1 = args, result in a0.
 * QEMU recognises the uncompressed slli/ebreak/srai sequence within one page. */
    .section .text.lstm_edge_semihost_trap, "ax"
    .global lstm_edge_semihost_trap
    .balign 16
lstm_edge_semihost_trap:
    .option push
    .option norvc
    slli x0, x0, 0x1f
    ebreak
    srai x0, x0, 7
    .option pop
    ret
