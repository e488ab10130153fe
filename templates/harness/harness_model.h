/* lstm-edge verification harnesses: the generated model named by -DMODEL=name -DMODEL_UPPER=NAME,
 * and its sizes under short names (shared by host_main.c and mcu_main.c). */
#ifndef LSTM_EDGE_HARNESS_MODEL_H_
#define LSTM_EDGE_HARNESS_MODEL_H_

#define STR_(x) #x
#define STR(x) STR_(x)
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#include STR(MODEL.h)

#define INPUT_SIZE CAT(MODEL_UPPER, _INPUT_SIZE)
#define OUTPUT_SIZE CAT(MODEL_UPPER, _OUTPUT_SIZE)
#define SEQUENCE_OUTPUT CAT(MODEL_UPPER, _SEQUENCE_OUTPUT)
#define STREAMING CAT(MODEL_UPPER, _STREAMING)

#endif
