/* lstm-edge kernel: int8 -> int8 activation by a 256-entry table computed offline (tanh, sigmoid heads).
 * Twin of lookup_s8 in lstm_edge/simulator.py. */
#include <stdint.h>

/* y[n] = table[x[n] + 128] */
static void lookup_s8(const int8_t *table, const int8_t *x, int8_t *y, int32_t n)
{
    int32_t k;
    for (k = 0; k < n; ++k) {
        y[k] = table[(int32_t)x[k] + 128];
    }
}
