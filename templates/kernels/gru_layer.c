/* lstm-edge kernel: one time step of one integer GRU layer (the LSTM's int8/int16 scheme applied
 * to the GRU). Twin of the gru_* functions in lstm_edge/simulator.py. Needs fixedpoint.c and
 * sigmoid_tanh.c. Gates in the order update (z), reset (r), new (n). */
#include <stdint.h>

enum { GRU_UPDATE = 0, GRU_RESET = 1, GRU_NEW = 2, GRU_GATE_COUNT = 3 };

/* Everything the step needs, computed offline by the quantizer; read-only. */
typedef struct {
    int32_t input_size;
    int32_t hidden_size;
    const int8_t *input_weights;     /* [3][H][I], symmetric int8 */
    const int8_t *recurrent_weights; /* [3][H][H], symmetric int8 */
    const int32_t *input_bias;       /* [3][H]: biases outside the reset product - zp_x * row sums */
    const int32_t *recurrent_bias;   /* [3][H]: Rb_n (linear_before_reset) - zp_h * row sums */
    requant_t input_requant[GRU_GATE_COUNT];     /* s_x * s_Wx / 2^-12 */
    requant_t recurrent_requant[GRU_GATE_COUNT]; /* s_h * s_Wh / 2^-12 */
    requant_t hidden_to_q15_requant;             /* s_h / 2^-15 */
    requant_t q15_to_hidden_requant;             /* 2^-15 / s_h */
    int32_t hidden_zero_point;
    int32_t linear_before_reset; /* 1: n = tanh(Wx + r (.) (Rh + Rb)); 0: n = tanh(Wx + R (r (.) h)) */
    int16_t gate_clip;           /* ONNX clip: |pre-activation| <= gate_clip (Q3.12) for z, r, n; 0: none */
} gru_layer_params_t;

/* Q0.15 products back to their factor's scale: 2^-15. */
static const requant_t gru_q15_product = { .multiplier = 1 << 30, .shift = -14 };

/* sat16(RQ(bias + W v)) for one gate row: a Q3.12 term. */
static int16_t gru_gate_term(const int8_t *weights, const int32_t *bias, requant_t requant, int32_t row,
                             const int8_t *v, int32_t n)
{
    return saturate_int16(multiply_by_quantized_multiplier(dot_s8(weights + row * n, v, n, bias[row]), requant));
}

/* r (.) h_prev, kept in h's int8 quantization: sat8(RQ(r * (h - zp_h), 2^-15) + zp_h) */
static int8_t gru_reset_hidden(const gru_layer_params_t *p, int16_t reset_gate, int8_t h)
{
    const int32_t centred = (int32_t)h - p->hidden_zero_point;
    return saturate_int8(multiply_by_quantized_multiplier((int32_t)reset_gate * centred, gru_q15_product)
                         + p->hidden_zero_point);
}

/* h = (1 - z) n + z h_prev = n + z (h_prev - n) in Q0.15, then back to int8. */
static int8_t gru_hidden_update(const gru_layer_params_t *p, int16_t update_gate, int16_t candidate, int8_t h)
{
    const int16_t h_prev = saturate_int16(multiply_by_quantized_multiplier((int32_t)h - p->hidden_zero_point,
                                                                           p->hidden_to_q15_requant));
    const int32_t moved = multiply_by_quantized_multiplier((int32_t)update_gate * ((int32_t)h_prev - candidate),
                                                           gru_q15_product);
    const int16_t h_new = saturate_int16((int32_t)candidate + moved);
    return saturate_int8(multiply_by_quantized_multiplier(h_new, p->q15_to_hidden_requant) + p->hidden_zero_point);
}

/* z and r of one unit: sigmoid(sat16(input term + recurrent term)), as the LSTM's gates. */
static int16_t gru_sigmoid_gate(const gru_layer_params_t *p, int32_t gate, int32_t unit, const int8_t *x,
                                const int8_t *h)
{
    const int32_t row = gate * p->hidden_size + unit;
    const int16_t from_input = gru_gate_term(p->input_weights, p->input_bias, p->input_requant[gate], row, x,
                                             p->input_size);
    const int16_t from_hidden = gru_gate_term(p->recurrent_weights, p->recurrent_bias, p->recurrent_requant[gate],
                                              row, h, p->hidden_size);
    return sigmoid_q15(clip_gate(p->gate_clip, saturate_int16((int32_t)from_input + (int32_t)from_hidden)));
}

/* One step. Pass 1 computes z for every unit (into update, H int16) and, without
 * linear_before_reset, the vector r (.) h_prev (into reset_hidden, H int8) that every unit's
 * candidate reads; pass 2 computes n and the new h (into h_next, H int8), which replaces h. */
static void gru_layer_step(const gru_layer_params_t *p, const int8_t *x, int8_t *h, int16_t *update,
                           int8_t *reset_hidden, int8_t *h_next)
{
    const int32_t new_row = GRU_NEW * p->hidden_size;
    int32_t j;
    for (j = 0; j < p->hidden_size; ++j) {
        update[j] = gru_sigmoid_gate(p, GRU_UPDATE, j, x, h);
        if (!p->linear_before_reset) {
            reset_hidden[j] = gru_reset_hidden(p, gru_sigmoid_gate(p, GRU_RESET, j, x, h), h[j]);
        }
    }
    for (j = 0; j < p->hidden_size; ++j) {
        const int16_t from_input = gru_gate_term(p->input_weights, p->input_bias, p->input_requant[GRU_NEW],
                                                 new_row + j, x, p->input_size);
        int16_t reset_term;
        if (p->linear_before_reset) {
            const int16_t reset_gate = gru_sigmoid_gate(p, GRU_RESET, j, x, h);
            const int16_t from_hidden = gru_gate_term(p->recurrent_weights, p->recurrent_bias,
                                                      p->recurrent_requant[GRU_NEW], new_row + j, h, p->hidden_size);
            reset_term = saturate_int16(multiply_by_quantized_multiplier((int32_t)reset_gate * from_hidden,
                                                                         gru_q15_product));
        } else {
            reset_term = gru_gate_term(p->recurrent_weights, p->recurrent_bias, p->recurrent_requant[GRU_NEW],
                                       new_row + j, reset_hidden, p->hidden_size);
        }
        h_next[j] = gru_hidden_update(
            p, update[j], tanh_q15(clip_gate(p->gate_clip, saturate_int16((int32_t)from_input + reset_term)), 0), h[j]);
    }
    for (j = 0; j < p->hidden_size; ++j) {
        h[j] = h_next[j];
    }
}
