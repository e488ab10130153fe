/* lstm-edge verification harness for emulated microcontrollers (`lstm-edge verify --target`):
 * feeds sequences to a generated model through semihosting files and writes its outputs back, so
 * they can be compared with the simulator. Also measures the stack the model uses (painted stack).
 *
 * Build: see lstm_edge/cross.py (-DMODEL=kws -DMODEL_UPPER=KWS -DCHUNK_STEPS=n, the target's startup).
 * lstm_edge_in.bin:  int32 count, int32 steps, then count * steps * INPUT_SIZE int8 (sequence-major)
 * lstm_edge_out.bin: per sequence, from reset, MODEL_run over the sequence (in calls of at most
 *                    CHUNK_STEPS steps; run continues from the state; a window model (STREAMING 0)
 *                    needs CHUNK_STEPS >= steps), then MODEL_step steps times (streaming models);
 *                    then int32 stack bytes of the first run call and of the first chunk of step
 *                    calls (first sequence), and int32 0x4C534544.
 * Between lstm_edge_mark_start and lstm_edge_mark_stop runs exactly one MODEL_run call (for counting
 * instructions with a QEMU plugin).
 */
#include <stdint.h>

#include "semihosting.h"

#include "harness_model.h"
#ifndef CHUNK_STEPS
#define CHUNK_STEPS 32
#endif
#define STACK_PATTERN 0xA5C3A5C3u
#define END_MAGIC 0x4C534544

static CAT(MODEL, _state_t) state;
static int8_t in_buf[CHUNK_STEPS * INPUT_SIZE];
static int8_t out_buf[CHUNK_STEPS * OUTPUT_SIZE];
extern uint32_t __stack_limit[];
volatile int32_t lstm_edge_marker;

__attribute__((noinline)) void lstm_edge_mark_start(void);
__attribute__((noinline)) void lstm_edge_mark_stop(void);

void lstm_edge_mark_start(void)
{
    lstm_edge_marker = 1;
}

void lstm_edge_mark_stop(void)
{
    lstm_edge_marker = 2;
}

static uintptr_t stack_pointer(void)
{
    uintptr_t sp;
#if defined(__arm__)
    __asm__ volatile("mov %0, sp" : "=r"(sp));
#else
    __asm__ volatile("mv %0, sp" : "=r"(sp));
#endif
    return sp;
}

/* Fill the free stack below sp with a pattern (inline: no frame of its own below sp). */
#define PAINT_STACK(top)                                                                            \
    do {                                                                                            \
        volatile uint32_t *p_;                                                                      \
        for (p_ = __stack_limit; (uintptr_t)p_ < (top); ++p_) {                                     \
            *p_ = STACK_PATTERN;                                                                    \
        }                                                                                           \
    } while (0)

/* Bytes below top that were written since PAINT_STACK. */
static int32_t stack_used(uintptr_t top)
{
    const volatile uint32_t *p = __stack_limit;
    while ((uintptr_t)p < top && *p == STACK_PATTERN) {
        ++p;
    }
    return (int32_t)(top - (uintptr_t)p);
}

static void fail(const char *why)
{
    sh_write0("lstm-edge harness: ");
    sh_write0(why);
    sh_write0("\n");
    sh_exit(3);
}

static void read_chunk(int32_t fd, int32_t len)
{
    if (sh_read(fd, in_buf, (uint32_t)(len * INPUT_SIZE)) != 0) {
        fail("short input");
    }
}

int main(void)
{
    int32_t header[2];
    int32_t trailer[3] = {0, 0, END_MAGIC};
    int32_t n, t, len;
    const int32_t fd_in = sh_open("lstm_edge_in.bin", SH_MODE_READ_BINARY);
    const int32_t fd_out = sh_open("lstm_edge_out.bin", SH_MODE_WRITE_BINARY);
    const uintptr_t top = stack_pointer();

    if (fd_in < 0 || fd_out < 0) {
        fail("cannot open lstm_edge_in.bin / lstm_edge_out.bin");
    }
    if (sh_read(fd_in, header, sizeof header) != 0 || header[0] < 0 || header[1] < 1) {
        fail("bad header");
    }
    for (n = 0; n < header[0]; ++n) {
        const uint32_t start = (uint32_t)(8 + n * header[1] * INPUT_SIZE);
        /* run(): whole chunks of the sequence, continuing from the state */
        CAT(MODEL, _reset)(&state);
        sh_seek(fd_in, start);
        for (t = 0; t < header[1]; t += len) {
            len = header[1] - t < CHUNK_STEPS ? header[1] - t : CHUNK_STEPS;
            read_chunk(fd_in, len);
            if (n == 0 && t == 0) {
                PAINT_STACK(top);
                lstm_edge_mark_start();
                CAT(MODEL, _run)(&state, in_buf, len, out_buf);
                lstm_edge_mark_stop();
                trailer[0] = stack_used(top);
            } else {
                CAT(MODEL, _run)(&state, in_buf, len, out_buf);
            }
            if (SEQUENCE_OUTPUT && sh_write(fd_out, out_buf, (uint32_t)(len * OUTPUT_SIZE)) != 0) {
                fail("write failed");
            }
        }
        if (!SEQUENCE_OUTPUT && sh_write(fd_out, out_buf, OUTPUT_SIZE) != 0) {
            fail("write failed");
        }
#if STREAMING
        /* step() x steps over the same sequence */
        CAT(MODEL, _reset)(&state);
        sh_seek(fd_in, start);
        for (t = 0; t < header[1]; t += len) {
            int32_t k;
            len = header[1] - t < CHUNK_STEPS ? header[1] - t : CHUNK_STEPS;
            read_chunk(fd_in, len);
            if (n == 0 && t == 0) {
                PAINT_STACK(top);
            }
            for (k = 0; k < len; ++k) {
                CAT(MODEL, _step)(&state, in_buf + k * INPUT_SIZE, out_buf + k * OUTPUT_SIZE);
            }
            if (n == 0 && t == 0) {
                trailer[1] = stack_used(top);
            }
            if (sh_write(fd_out, out_buf, (uint32_t)(len * OUTPUT_SIZE)) != 0) {
                fail("write failed");
            }
        }
#endif
    }
    if (sh_write(fd_out, trailer, sizeof trailer) != 0) {
        fail("write failed");
    }
    sh_close(fd_in);
    sh_close(fd_out);
    return 0;
}
