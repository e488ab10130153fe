/* lstm-edge kernel: one time step of one integer LSTM layer (TFLite-Micro int8x8_16 arithmetic).
 * Twin of lstm_edge/simulator.py (lstm_gate_preactivation, lstm_cell_update, lstm_hidden_output).
 * Needs fixedpoint.c and sigmoid_tanh.c. Gates in the order input, forget, cell (g), output. */
#include <stdint.h>

enum { GATE_INPUT = 0, GATE_FORGET = 1, GATE_CELL = 2, GATE_OUTPUT = 3, GATE_COUNT = 4 };

/* Everything the step needs, computed offline by the quantizer; read-only. */
typedef struct {
    int32_t input_size;
    int32_t hidden_size;
    const int8_t *input_weights;     /* [4][H][I], symmetric int8 */
    const int8_t *recurrent_weights; /* [4][H][H], symmetric int8 */
    const int32_t *input_bias;       /* [4][H]: bias - zp_x * row sums of input_weights */
    const int32_t *recurrent_bias;   /* [4][H]: - zp_h * row sums of recurrent_weights */
    requant_t input_requant[GATE_COUNT];     /* s_x * s_Wx / 2^-12 */
    requant_t recurrent_requant[GATE_COUNT]; /* s_h * s_Wh / 2^-12 */
    requant_t forget_cell_requant;           /* 2^-15: f (Q0.15) * c -> c */
    requant_t input_cell_requant;            /* 2^-30 / s_c: i (Q0.15) * g (Q0.15) -> c */
    requant_t hidden_requant;                /* 2^-30 / s_h: o (Q0.15) * tanh(c) (Q0.15) -> h */
    int32_t hidden_zero_point;
    int32_t cell_tanh_shift; /* log2(s_c) + 12: tanh reads c at scale 2^(shift - 12) */
    int16_t cell_clip;       /* 0: no clip */
} lstm_layer_params_t;

/* pre_g[j] = sat16( sat16(RQ(Bx + Wx x, Mx)) + sat16(RQ(Bh + Wh h, Mh)) ), in Q3.12.
 * Each term is saturated on its own before the add, as TFLite-Micro's two int16 FULLY_CONNECTEDs. */
static int16_t lstm_gate_preactivation(const lstm_layer_params_t *p, int32_t gate, int32_t unit,
                                       const int8_t *x, const int8_t *h)
{
    const int32_t row = gate * p->hidden_size + unit;
    const int32_t ax = dot_s8(p->input_weights + row * p->input_size, x, p->input_size, p->input_bias[row]);
    const int32_t ah = dot_s8(p->recurrent_weights + row * p->hidden_size, h, p->hidden_size,
                              p->recurrent_bias[row]);
    const int16_t from_input = saturate_int16(multiply_by_quantized_multiplier(ax, p->input_requant[gate]));
    const int16_t from_hidden = saturate_int16(multiply_by_quantized_multiplier(ah, p->recurrent_requant[gate]));
    return saturate_int16((int32_t)from_input + (int32_t)from_hidden);
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
    int32_t j;
    for (j = 0; j < p->hidden_size; ++j) {
        const int16_t i_gate = sigmoid_q15(lstm_gate_preactivation(p, GATE_INPUT, j, x, h));
        const int16_t f_gate = sigmoid_q15(lstm_gate_preactivation(p, GATE_FORGET, j, x, h));
        const int16_t g_gate = tanh_q15(lstm_gate_preactivation(p, GATE_CELL, j, x, h), 0);
        const int16_t o_gate = sigmoid_q15(lstm_gate_preactivation(p, GATE_OUTPUT, j, x, h));
        c[j] = lstm_cell_update(p, c[j], f_gate, i_gate, g_gate);
        h_next[j] = lstm_hidden_output(p, o_gate, c[j]);
    }
    for (j = 0; j < p->hidden_size; ++j) {
        h[j] = h_next[j];
    }
}
