/* lstm-edge kernel: fixed-point primitives (TFLite's MultiplyByQuantizedMultiplier).
 * Twin of lstm_edge/fixedpoint.py: same names, same rounding, same saturation. */
#include <stdint.h>

/* A real factor m stored as m = multiplier * 2^(shift - 31), multiplier in [2^30, 2^31). */
typedef struct {
    int32_t multiplier;
    int32_t shift;
} requant_t;

static int16_t saturate_int16(int32_t v)
{
    return (int16_t)(v < -32768 ? -32768 : (v > 32767 ? 32767 : v));
}

static int8_t saturate_int8(int32_t v)
{
    return (int8_t)(v < -128 ? -128 : (v > 127 ? 127 : v));
}

/* (a * b * 2 + 2^31) / 2^32 rounded to nearest; only INT32_MIN * INT32_MIN overflows. */
static int32_t saturating_rounding_doubling_high_mul(int32_t a, int32_t b)
{
    const int64_t ab = (int64_t)a * (int64_t)b;
    const int64_t nudge = ab >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30));
    if (a == INT32_MIN && b == INT32_MIN) {
        return INT32_MAX;
    }
    /* C division truncates toward zero, as the reference requires. */
    return (int32_t)((ab + nudge) / ((int64_t)1 << 31));
}

/* x / 2^exponent, rounded to nearest with ties away from zero (exponent in 0..31). */
static int32_t rounding_divide_by_pot(int32_t x, int32_t exponent)
{
    const int32_t mask = (int32_t)(((int64_t)1 << exponent) - 1);
    const int32_t remainder = x & mask;
    const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* x * m with double rounding. The compiler checked offline that x * 2^max(shift, 0) fits in int32. */
static int32_t multiply_by_quantized_multiplier(int32_t x, requant_t m)
{
    const int32_t left = m.shift > 0 ? m.shift : 0;
    const int32_t right = m.shift > 0 ? 0 : -m.shift;
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x * ((int32_t)1 << left), m.multiplier),
                                  right);
}

/* acc + sum_k w[k] * v[k]; the quantizer bounds every such sum to int32 offline. */
static int32_t dot_s8(const int8_t *w, const int8_t *v, int32_t n, int32_t acc)
{
    int32_t k;
    for (k = 0; k < n; ++k) {
        acc += (int32_t)w[k] * (int32_t)v[k];
    }
    return acc;
}
