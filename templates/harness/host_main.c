/* lstm-edge verification harness for the host: feeds sequences to a generated model and
 * writes its outputs, so `lstm-edge verify` can compare them with the simulator.
 *
 * Build: cc -DMODEL=kws -DMODEL_UPPER=KWS -I build/kws host_main.c build/kws/kws.c
 * Usage: harness run|step N T < inputs.bin > outputs.bin
 *   inputs:  N * T * INPUT_SIZE int8, sequence-major then step-major
 *   run:     each sequence from reset through MODEL_run: N * (T or 1) * OUTPUT_SIZE int8
 *   step:    each sequence from reset through T calls of MODEL_step: N * T * OUTPUT_SIZE int8
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness_model.h"

int main(int argc, char **argv)
{
    CAT(MODEL, _state_t) state;
    long n, count, steps;
    int step_mode;
    size_t in_len, out_len;
    int8_t *in;
    int8_t *out;

    if (argc != 4 || (strcmp(argv[1], "run") != 0 && strcmp(argv[1], "step") != 0)) {
        fprintf(stderr, "usage: %s run|step N T < inputs > outputs\n", argv[0]);
        return 2;
    }
    step_mode = strcmp(argv[1], "step") == 0;
    count = atol(argv[2]);
    steps = atol(argv[3]);
    in_len = (size_t)steps * INPUT_SIZE;
    out_len = (size_t)((step_mode || SEQUENCE_OUTPUT) ? steps : 1) * OUTPUT_SIZE;
    in = malloc(in_len + 1);
    out = malloc(out_len + 1);
    if (in == NULL || out == NULL) {
        return 3;
    }
    for (n = 0; n < count; ++n) {
        if (fread(in, 1, in_len, stdin) != in_len) {
            fprintf(stderr, "short input at sequence %ld\n", n);
            return 4;
        }
        CAT(MODEL, _reset)(&state);
        if (step_mode) {
#if STREAMING
            long t;
            for (t = 0; t < steps; ++t) {
                CAT(MODEL, _step)(&state, in + t * INPUT_SIZE, out + t * OUTPUT_SIZE);
            }
#else
            fprintf(stderr, "a window model has no step()\n");
            return 6;
#endif
        } else {
            CAT(MODEL, _run)(&state, in, (int32_t)steps, out);
        }
        if (fwrite(out, 1, out_len, stdout) != out_len) {
            return 5;
        }
    }
    free(in);
    free(out);
    return 0;
}
