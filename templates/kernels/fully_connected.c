/* lstm-edge kernel: int8 fully connected layer (TFLite-Micro int8 FULLY_CONNECTED, per-channel).
 * Twin of fully_connected_s8 in lstm_edge/simulator.py. Needs fixedpoint.c. */
#include <stdint.h>

typedef struct {
    int32_t input_size;
    int32_t output_size;
    const int8_t *weights;    /* [N][K], symmetric int8 */
    const int32_t *bias;      /* [N]: bias - zp_in * row sums of weights */
    const requant_t *requant; /* [N]: s_in * s_w[n] / s_out */
    int32_t output_zero_point;
    int32_t activation_min; /* fused ReLU / int8 range */
    int32_t activation_max;
} fully_connected_params_t;

/* y[n] = clamp( RQ(B[n] + sum_k W[n,k] x[k], M[n]) + zp_y, act_min, act_max ) */
static void fully_connected_s8(const fully_connected_params_t *p, const int8_t *x, int8_t *y)
{
    int32_t n;
    for (n = 0; n < p->output_size; ++n) {
        const int32_t acc = dot_s8(p->weights + n * p->input_size, x, p->input_size, p->bias[n]);
        int32_t v = multiply_by_quantized_multiplier(acc, p->requant[n]) + p->output_zero_point;
        v = v < p->activation_min ? p->activation_min : v;
        v = v > p->activation_max ? p->activation_max : v;
        y[n] = (int8_t)v;
    }
}
