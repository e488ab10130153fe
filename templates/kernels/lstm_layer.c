/* lstm-edge kernel: one time step of one integer LSTM layer (TFLite-Micro int8x8_16 arithmetic).
 * Twin of lstm_edge/simulator.py (lstm_gate_preactivation, lstm_cell_update, lstm_hidden_output).
 * Needs fixedpoint.c and sigmoid_tanh.c. Gates in the order input, forget, cell (g), output. */
#include <stdint.h>

enum { GATE_INPUT = 0, GATE_FORGET = 1, GATE_CELL = 2, GATE_OUTPUT = 3, GATE_COUNT = 4 };

/* Everything the step needs, computed offline by the quantizer; read-only. The weights are laid out
 * offline for this kernel (lstm_edge/codegen.py, lstm_unit_blocks): unit by unit, then in blocks of
 * 4 columns, then gate by gate, so one pass over x (or h) feeds the four gate rows of a unit, and
 * stored offset by 128 (unsigned bytes, which every core loads in one instruction):
 *   weights[j][b][g][r] = W_g[j][4b + r] + 128,  columns padded to a multiple of 4.
 * sum_k W[k] v[k] is then sum_k weights[k] v[k] - 128 sum_k v[k], the last term once per vector. */
typedef struct {
    int32_t input_size;
    int32_t hidden_size;
    const uint8_t *input_weights;     /* [H][ceil(I/4)][4][4], symmetric int8 + 128 */
    const uint8_t *recurrent_weights; /* [H][ceil(H/4)][4][4], symmetric int8 + 128 */
    const int32_t *input_bias;        /* [H][4]: bias - zp_x * row sums of the int8 input weights */
    const int32_t *recurrent_bias;    /* [H][4]: - zp_h * row sums of the int8 recurrent weights */
    requant_t input_requant[GATE_COUNT];     /* s_x * s_Wx / 2^-12 */
    requant_t recurrent_requant[GATE_COUNT]; /* s_h * s_Wh / 2^-12 */
    requant_t forget_cell_requant;           /* 2^-15: f (Q0.15) * c -> c */
    requant_t input_cell_requant;            /* 2^-30 / s_c: i (Q0.15) * g (Q0.15) -> c */
    requant_t hidden_requant;                /* 2^-30 / s_h: o (Q0.15) * tanh(c) (Q0.15) -> h */
    int32_t hidden_zero_point;
    int32_t cell_tanh_shift; /* log2(s_c) + 12: tanh reads c at scale 2^(shift - 12) */
    int16_t cell_clip;       /* 0: no clip */
    int16_t gate_clip;       /* ONNX clip: |pre-activation| <= gate_clip (Q3.12) before the activations; 0: none */
    int32_t input_forget;    /* ONNX input_forget: 1 couples the gates, f = 1 - i */
    const int16_t *peephole_weights;           /* [3][H] (input, forget, output), symmetric int16; 0: none */
    requant_t peephole_requant[3];             /* s_P * s_c / 2^-12 */
} lstm_layer_params_t;

/* The weight arrays are word-aligned where the compiler can be told so: the DSP path then loads two
 * words per instruction (blocks are 16 bytes, so every block stays aligned). */
#if defined(__GNUC__)
#define LSTM_WEIGHTS_ALIGNED __attribute__((aligned(4)))
#define LSTM_ASSUME_ALIGNED(p) ((const uint8_t *)__builtin_assume_aligned((p), 4))
#else
#define LSTM_WEIGHTS_ALIGNED
#define LSTM_ASSUME_ALIGNED(p) (p)
#endif

#if defined(__ARM_FEATURE_DSP) && !defined(__ARM_BIG_ENDIAN)
/* Cortex-M4/M7/M33...: SIMD multiply-accumulate through the compiler's ACLE intrinsics. */
#include <arm_acle.h>
#include <string.h>

/* UXTB16: clang declares it on signed words, gcc (and the ACLE) on unsigned ones. */
#if defined(__clang__)
#define lstm_uxtb16(x) ((int32_t)__uxtb16((int32_t)(x)))
#else
#define lstm_uxtb16(x) ((int32_t)__uxtb16(x))
#endif

/* Bytes 1 and 3 of a word, extended to two 16-bit lanes: one SXTB16/UXTB16 with its rotation (GNU C
 * compilers do not fuse the rotate into the intrinsic by themselves). */
#if defined(__GNUC__)
static inline int32_t lstm_sxtb16_ror8(uint32_t x)
{
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}

static inline int32_t lstm_uxtb16_ror8(uint32_t x)
{
    int32_t r;
    __asm__("uxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}
#else
#define lstm_sxtb16_ror8(x) __sxtb16((int32_t)(((x) >> 8) | ((x) << 24)))
#define lstm_uxtb16_ror8(x) lstm_uxtb16(((x) >> 8) | ((x) << 24))
#endif

/* One block: 4 columns x 4 gates. SMLAD adds two 16x16 products: columns 0 and 2 (U/SXTB16), then
 * columns 1 and 3 (after rotating by 8), unsigned weights times signed v. */
#define LSTM_DSP_GATE(word, even, odd, s) \
    s = __smlad(lstm_uxtb16_ror8(word), odd, __smlad(lstm_uxtb16(word), even, s))
#define LSTM_DSP_BLOCK(w, v, s0, s1, s2, s3)                                                        \
    do {                                                                                        \
        const uint8_t *wa_ = LSTM_ASSUME_ALIGNED(w);                                            \
        uint32_t xv_, w0_, w1_, w2_, w3_;                                                       \
        int32_t even_, odd_;                                                                    \
        memcpy(&xv_, (v), 4);                                                                   \
        memcpy(&w0_, wa_, 4);                                                                   \
        memcpy(&w1_, wa_ + 4, 4);                                                               \
        memcpy(&w2_, wa_ + 8, 4);                                                               \
        memcpy(&w3_, wa_ + 12, 4);                                                              \
        even_ = __sxtb16((int32_t)xv_);                                                         \
        odd_ = lstm_sxtb16_ror8(xv_);                                                           \
        LSTM_DSP_GATE(w0_, even_, odd_, s0);                                                    \
        LSTM_DSP_GATE(w1_, even_, odd_, s1);                                                    \
        LSTM_DSP_GATE(w2_, even_, odd_, s2);                                                    \
        LSTM_DSP_GATE(w3_, even_, odd_, s3);                                                    \
    } while (0)
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__thumb__) && !defined(__thumb2__) && __ARM_ARCH >= 6
/* Cortex-M0/M0+/M23 (16-bit Thumb only, no multiply-accumulate): one block in assembly, so the four
 * sums, the weight and v pointers and two temporaries stay in registers (gcc spills them otherwise).
 * Per column: LDRB+SXTB of v, then per gate LDRB (unsigned weight), MULS, ADD. It reads memory: the
 * "memory" clobber keeps the compiler from moving stores across it. */
#if defined(__ARM_ASM_SYNTAX_UNIFIED__)
#define LSTM_T1_MUL "muls"
#else
#define LSTM_T1_MUL "mul" /* gcc's default divided syntax for Thumb-1 inline assembly */
#endif
#define LSTM_T1_COLUMN(c)                                                                          \
    "ldrb %[x], [%[v], #" #c "]\n\t"                                                                \
    "sxtb %[x], %[x]\n\t"                                                                           \
    "ldrb %[t], [%[w], #" #c "]\n\t" LSTM_T1_MUL " %[t], %[x]\n\tadd %[a0], %[t]\n\t"                 \
    "ldrb %[t], [%[w], #4+" #c "]\n\t" LSTM_T1_MUL " %[t], %[x]\n\tadd %[a1], %[t]\n\t"               \
    "ldrb %[t], [%[w], #8+" #c "]\n\t" LSTM_T1_MUL " %[t], %[x]\n\tadd %[a2], %[t]\n\t"               \
    "ldrb %[t], [%[w], #12+" #c "]\n\t" LSTM_T1_MUL " %[t], %[x]\n\tadd %[a3], %[t]\n\t"
#define LSTM_T1_BLOCK(w, v, a0, a1, a2, a3)                                                         \
    do {                                                                                        \
        int32_t x_, t_;                                                                         \
        __asm__(LSTM_T1_COLUMN(0) LSTM_T1_COLUMN(1) LSTM_T1_COLUMN(2) LSTM_T1_COLUMN(3)         \
                : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [x] "=&l"(x_),    \
                  [t] "=&l"(t_)                                                                 \
                : [w] "l"(w), [v] "l"(v)                                                        \
                : "cc", "memory");                                                              \
    } while (0)
#endif

/* sum_k v[k] (for the weights' offset of 128). */
static int32_t lstm_sum_s8(const int8_t *v, int32_t n)
{
    int32_t sum = 0;
    int32_t k;
    for (k = 0; k < n; ++k) {
        sum += v[k];
    }
    return sum;
}

/* acc[g] = bias[g] - offset + sum_k (W_g[k] + 128) v[k] over k < n, for the four gates of one unit;
 * w: that unit's blocks, offset: 128 sum(v). Exact integer sums (the code generator bounds every partial
 * sum to int32), so every path gives the same bits; only the order of the additions differs. */
static void lstm_gate_dots(const uint8_t *w, const int8_t *v, int32_t n, const int32_t bias[GATE_COUNT],
                           int32_t offset, int32_t acc[GATE_COUNT])
{
    const int8_t *const whole = v + (n & ~(int32_t)3);
    const int8_t *const end = v + n;
    int32_t a0 = bias[0] - offset, a1 = bias[1] - offset, a2 = bias[2] - offset, a3 = bias[3] - offset;
#if defined(LSTM_DSP_BLOCK)
    for (; v < whole; v += 4, w += 16) {
        LSTM_DSP_BLOCK(w, v, a0, a1, a2, a3);
    }
#elif defined(LSTM_T1_BLOCK)
    for (; v < whole; v += 4, w += 16) {
        LSTM_T1_BLOCK(w, v, a0, a1, a2, a3);
    }
#else
    for (; v < whole; v += 4, w += 16) {
        const int32_t v0 = v[0], v1 = v[1], v2 = v[2], v3 = v[3];
        a0 += w[0] * v0 + w[1] * v1 + w[2] * v2 + w[3] * v3;
        a1 += w[4] * v0 + w[5] * v1 + w[6] * v2 + w[7] * v3;
        a2 += w[8] * v0 + w[9] * v1 + w[10] * v2 + w[11] * v3;
        a3 += w[12] * v0 + w[13] * v1 + w[14] * v2 + w[15] * v3;
    }
#endif
    for (; v < end; ++v, ++w) { /* the last, padded block: column k is byte k % 4 of each gate */
        const int32_t vk = *v;
        a0 += w[0] * vk;
        a1 += w[4] * vk;
        a2 += w[8] * vk;
        a3 += w[12] * vk;
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
}

/* sat16( sat16(RQ(ax, Mx)) + sat16(RQ(ah, Mh)) ): each term is saturated on its own before the add, as
 * TFLite-Micro's two int16 FULLY_CONNECTEDs. CMSIS-NN does not clamp the recurrent term first, so the
 * two kernels differ when that term alone passes +-8.0; we follow TFLM (tests/test_tflm_oracle.py). */
static int16_t lstm_gate_sum(int32_t ax, int32_t ah, requant_t mx, requant_t mh)
{
    const int16_t from_input = saturate_int16(multiply_by_quantized_multiplier(ax, mx));
    const int16_t from_hidden = saturate_int16(multiply_by_quantized_multiplier(ah, mh));
    return saturate_int16((int32_t)from_input + (int32_t)from_hidden);
}

/* pre_g = sat16( sat16(RQ(Bx + Wx x, Mx)) + sat16(RQ(Bh + Wh h, Mh)) ) in Q3.12 for the four gates of one
 * unit. x_offset = 128 sum(x) and h_offset = 128 sum(h) undo the weights' offset. */
static void lstm_gate_preactivation(const lstm_layer_params_t *p, int32_t unit, const int8_t *x, const int8_t *h,
                                    int32_t x_offset, int32_t h_offset, int16_t pre[GATE_COUNT])
{
    int32_t ax[GATE_COUNT], ah[GATE_COUNT];
    lstm_gate_dots(p->input_weights + unit * GATE_COUNT * ((p->input_size + 3) & ~3), x, p->input_size,
                   p->input_bias + unit * GATE_COUNT, x_offset, ax);
    lstm_gate_dots(p->recurrent_weights + unit * GATE_COUNT * ((p->hidden_size + 3) & ~3), h, p->hidden_size,
                   p->recurrent_bias + unit * GATE_COUNT, h_offset, ah);
    pre[0] = lstm_gate_sum(ax[0], ah[0], p->input_requant[0], p->recurrent_requant[0]);
    pre[1] = lstm_gate_sum(ax[1], ah[1], p->input_requant[1], p->recurrent_requant[1]);
    pre[2] = lstm_gate_sum(ax[2], ah[2], p->input_requant[2], p->recurrent_requant[2]);
    pre[3] = lstm_gate_sum(ax[3], ah[3], p->input_requant[3], p->recurrent_requant[3]);
}

/* pre + p (.) c: sat16(pre + sat16(RQ(P[gate] * c, s_P s_c / 2^-12))), a Q3.12 term. */
static int16_t lstm_peephole(const lstm_layer_params_t *p, int32_t gate, int32_t unit, int16_t pre, int16_t cell)
{
    const int32_t product = (int32_t)p->peephole_weights[gate * p->hidden_size + unit] * cell;
    return saturate_int16((int32_t)pre + saturate_int16(multiply_by_quantized_multiplier(product,
                                                                                       p->peephole_requant[gate])));
}

/* c = clip( sat16( sat16(RQ(f * c_prev)) + sat16(RQ(i * g)) ) ) */
static int16_t lstm_cell_update(const lstm_layer_params_t *p, int16_t cell, int16_t forget, int16_t input,
                                int16_t candidate)
{
    const int16_t kept = saturate_int16(multiply_by_quantized_multiplier((int32_t)forget * cell,
                                                                         p->forget_cell_requant));
    const int16_t added = saturate_int16(multiply_by_quantized_multiplier((int32_t)input * candidate,
                                                                          p->input_cell_requant));
    int16_t updated = saturate_int16((int32_t)kept + (int32_t)added);
    if (p->cell_clip > 0) {
        updated = updated > p->cell_clip ? p->cell_clip : updated;
        updated = updated < -p->cell_clip ? (int16_t)-p->cell_clip : updated;
    }
    return updated;
}

/* h = sat8( RQ(o * tanh(c)) + zp_h ) */
static int8_t lstm_hidden_output(const lstm_layer_params_t *p, int16_t output_gate, int16_t cell)
{
    const int32_t product = (int32_t)output_gate * tanh_q15(cell, p->cell_tanh_shift);
    return saturate_int8(multiply_by_quantized_multiplier(product, p->hidden_requant) + p->hidden_zero_point);
}

/* One step, unit by unit so only four gate values are live. h is read as h_prev for every unit,
 * so new values go to h_next (H bytes, caller-owned) and replace h at the end. c is updated in place. */
static void lstm_layer_step(const lstm_layer_params_t *p, const int8_t *x, int8_t *h, int16_t *c, int8_t *h_next)
{
    const int32_t x_offset = 128 * lstm_sum_s8(x, p->input_size);
    const int32_t h_offset = 128 * lstm_sum_s8(h, p->hidden_size);
    int32_t j;
    for (j = 0; j < p->hidden_size; ++j) {
        int16_t pre[GATE_COUNT];
        int16_t i_gate, f_gate, g_gate, o_gate;
        lstm_gate_preactivation(p, j, x, h, x_offset, h_offset, pre);
        if (p->peephole_weights != 0) { /* i and f see c_prev; o sees the new c, below */
            pre[GATE_INPUT] = lstm_peephole(p, 0, j, pre[GATE_INPUT], c[j]);
            pre[GATE_FORGET] = lstm_peephole(p, 1, j, pre[GATE_FORGET], c[j]);
        }
        i_gate = sigmoid_q15(clip_gate(p->gate_clip, pre[GATE_INPUT]));
        /* input_forget: f = 1 - i in Q0.15 (i >= 11, so no saturation is needed; kept for symmetry) */
        f_gate = p->input_forget ? saturate_int16(32768 - (int32_t)i_gate)
                                 : sigmoid_q15(clip_gate(p->gate_clip, pre[GATE_FORGET]));
        g_gate = tanh_q15(clip_gate(p->gate_clip, pre[GATE_CELL]), 0);
        c[j] = lstm_cell_update(p, c[j], f_gate, i_gate, g_gate);
        if (p->peephole_weights != 0) {
            pre[GATE_OUTPUT] = lstm_peephole(p, 2, j, pre[GATE_OUTPUT], c[j]);
        }
        o_gate = sigmoid_q15(clip_gate(p->gate_clip, pre[GATE_OUTPUT]));
        h_next[j] = lstm_hidden_output(p, o_gate, c[j]);
    }
    for (j = 0; j < p->hidden_size; ++j) {
        h[j] = h_next[j];
    }
}
