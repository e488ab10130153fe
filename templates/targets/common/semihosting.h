/* lstm-edge test firmware: the few Arm semihosting calls the harness needs (QEMU implements them for
 * Cortex-M through BKPT 0xAB and for RISC-V through the slli/ebreak/srai sequence). */
#ifndef LSTM_EDGE_SEMIHOSTING_H_
#define LSTM_EDGE_SEMIHOSTING_H_

#include <stdint.h>

enum { SH_MODE_READ_BINARY = 1, SH_MODE_WRITE_BINARY = 5 };

int32_t sh_open(const char *path, int32_t mode);       /* handle, or -1 */
int32_t sh_close(int32_t handle);
int32_t sh_read(int32_t handle, void *buf, uint32_t n);  /* 0 when all n bytes were read */
int32_t sh_write(int32_t handle, const void *buf, uint32_t n);  /* 0 when all n bytes were written */
int32_t sh_seek(int32_t handle, uint32_t position);     /* 0 on success */
void sh_write0(const char *text);                        /* a message on QEMU's console */
void sh_exit(int32_t code);                               /* ends QEMU with this exit code */

#endif
