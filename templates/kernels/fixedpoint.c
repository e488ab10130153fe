/* lstm-edge kernel: fixed-point primitives (TFLite's MultiplyByQuantizedMultiplier).
 * Twin of lstm_edge/fixedpoint.py: same names, same rounding, same saturation. */
#include <stdint.h>

/* A real factor m stored as m = multiplier * 2^(shift - 31), multiplier in [2^30, 2^31). */
typedef struct {
    int32_t multiplier;
    int32_t shift;
} requant_t;

/* Clamp above, then below: compilers turn this form into one SSAT on Arm (the nested ?: into branches). */
static int16_t saturate_int16(int32_t v)
{
    v = v > 32767 ? 32767 : v;
    v = v < -32768 ? -32768 : v;
    return (int16_t)v;
}

static int8_t saturate_int8(int32_t v)
{
    v = v > 127 ? 127 : v;
    v = v < -128 ? -128 : v;
    return (int8_t)v;
}

/* TFLite's SaturatingRoundingDoublingHighMul (saturating_rounding_doubling_high_mul in fixedpoint.py)
 * for b >= 0, where it cannot saturate (its one overflow is INT32_MIN * INT32_MIN). The reference adds
 * a nudge of 2^30 (1 - 2^30 when a * b < 0) and divides by 2^31 truncating toward zero; in both cases
 * that is floor((a * b + 2^30) / 2^31): an arithmetic shift, no 64-bit division. Cores without a
 * 32 x 32 -> 64 multiply (16-bit Thumb: Cortex-M0/M0+/M23) build it from four 16 x 16 products, keeping
 * only the bits that reach the result (a = ah 2^16 + al, b = bh 2^16 + bl, al and bl unsigned):
 *   a b + 2^30 = ah bh 2^32 + (m1 + m2) 2^16 + al bl + 2^30,  m1 = ah bl, m2 = al bh
 *   result = 2 ah bh + 2 (m1 >> 16) + 2 (m2 >> 16) + ((m1 & 0xFFFF) + (m2 & 0xFFFF) + (al bl >> 16) + 2^14) >> 15
 * (the sums are taken modulo 2^32; the result itself fits unless a = b = INT32_MIN). */
#if defined(__thumb__) && !defined(__thumb2__) && !defined(LSTM_EDGE_NO_LONG_MULTIPLY)
#define LSTM_EDGE_NO_LONG_MULTIPLY 1
#endif
static inline int32_t rounding_doubling_high_product(int32_t a, int32_t b)
{
#if defined(LSTM_EDGE_NO_LONG_MULTIPLY)
    const int32_t a_high = a >> 16, b_high = b >> 16;
    const int32_t a_low = a & 0xFFFF, b_low = b & 0xFFFF;
    const int32_t m1 = a_high * b_low, m2 = a_low * b_high;
    const uint32_t low = (uint32_t)a_low * (uint32_t)b_low;
    const uint32_t carry = ((uint32_t)(m1 & 0xFFFF) + (uint32_t)(m2 & 0xFFFF) + (low >> 16) + 0x4000u) >> 15;
    return (int32_t)(2u * (uint32_t)(a_high * b_high) + 2u * (uint32_t)((m1 >> 16) + (m2 >> 16)) + carry);
#else
    return (int32_t)(((int64_t)a * (int64_t)b + ((int64_t)1 << 30)) >> 31);
#endif
}

/* x / 2^exponent, rounded to nearest with ties away from zero (exponent in 0..31). */
static inline int32_t rounding_divide_by_pot(int32_t x, int32_t exponent)
{
    const int32_t mask = (int32_t)(((uint32_t)1 << exponent) - 1u);
    const int32_t remainder = x & mask;
    const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* x * m with double rounding. The compiler checked offline that x * 2^max(shift, 0) fits in int32; the
 * multiplier is never negative.
 * left = max(shift, 0) and right = max(-shift, 0) without branches (shift is in -31..30). */
static inline int32_t multiply_by_quantized_multiplier(int32_t x, requant_t m)
{
    const int32_t negative = -(int32_t)(m.shift < 0);
    const int32_t left = m.shift & ~negative;
    const int32_t right = -m.shift & negative;
    return rounding_divide_by_pot(rounding_doubling_high_product(x * ((int32_t)1 << left), m.multiplier), right);
}

/* ONNX clip: a gate's pre-activation bounded to +-gate_clip before its activation (0: none). */
static int16_t clip_gate(int16_t gate_clip, int16_t pre)
{
    if (gate_clip > 0) {
        pre = pre > gate_clip ? gate_clip : pre;
        pre = pre < -gate_clip ? (int16_t)-gate_clip : pre;
    }
    return pre;
}
