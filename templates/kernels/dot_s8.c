/* lstm-edge kernel: int8 dot product of one row-major weight row (GRU and dense layers). */
#include <stdint.h>

/* acc + sum_k w[k] * v[k]; the quantizer bounds every such sum to int32 offline. */
static int32_t dot_s8(const int8_t *w, const int8_t *v, int32_t n, int32_t acc)
{
    int32_t k;
    for (k = 0; k < n; ++k) {
        acc += (int32_t)w[k] * (int32_t)v[k];
    }
    return acc;
}
