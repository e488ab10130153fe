/* lstm-edge test firmware: semihosting calls on top of one trap (see semihosting.h). */
#include "semihosting.h"

enum {
    SYS_OPEN = 0x01, SYS_CLOSE = 0x02, SYS_WRITE0 = 0x04, SYS_WRITE = 0x05, SYS_READ = 0x06,
    SYS_SEEK = 0x0A, SYS_EXIT_EXTENDED = 0x20
};
#define ADP_STOPPED_APPLICATION_EXIT 0x20026u

#if defined(__arm__)
static int32_t semihost_call(int32_t op, const uint32_t *args)
{
    register int32_t r0 __asm__("r0") = op;
    register const uint32_t *r1 __asm__("r1") = args;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}
#elif defined(__riscv)
int32_t lstm_edge_semihost_trap(int32_t op, const uint32_t *args); /* startup_riscv.S */
#define semihost_call lstm_edge_semihost_trap
#else
#error "lstm-edge semihosting: unsupported architecture"
#endif

static uint32_t word(const void *p)
{
    return (uint32_t)(uintptr_t)p;
}

int32_t sh_open(const char *path, int32_t mode)
{
    uint32_t args[3];
    uint32_t n = 0;
    while (path[n] != '\0') {
        ++n;
    }
    args[0] = word(path);
    args[1] = (uint32_t)mode;
    args[2] = n;
    return semihost_call(SYS_OPEN, args);
}

int32_t sh_close(int32_t handle)
{
    uint32_t args[1];
    args[0] = (uint32_t)handle;
    return semihost_call(SYS_CLOSE, args);
}

int32_t sh_read(int32_t handle, void *buf, uint32_t n)
{
    uint32_t args[3];
    args[0] = (uint32_t)handle;
    args[1] = word(buf);
    args[2] = n;
    return semihost_call(SYS_READ, args);
}

int32_t sh_write(int32_t handle, const void *buf, uint32_t n)
{
    uint32_t args[3];
    args[0] = (uint32_t)handle;
    args[1] = word(buf);
    args[2] = n;
    return semihost_call(SYS_WRITE, args);
}

int32_t sh_seek(int32_t handle, uint32_t position)
{
    uint32_t args[2];
    args[0] = (uint32_t)handle;
    args[1] = position;
    return semihost_call(SYS_SEEK, args);
}

void sh_write0(const char *text)
{
    (void)semihost_call(SYS_WRITE0, (const uint32_t *)(const void *)text);
}

void sh_exit(int32_t code)
{
    uint32_t args[2];
    args[0] = ADP_STOPPED_APPLICATION_EXIT;
    args[1] = (uint32_t)code;
    (void)semihost_call(SYS_EXIT_EXTENDED, args);
    for (;;) {
    }
}
