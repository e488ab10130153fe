"""Quantizer: float model + calibration ranges -> QuantizedModel (TFLite-Micro int8x8_16 LSTM).

Everything that can be computed offline is computed here, once: int8 weights, folded int32
biases, fixed-point multipliers, the cell scale, activation tables. Scales are float32 values
and effective scales are formed in double from them, as TFLite-Micro does at prepare time.
"""

from __future__ import annotations

import math

import numpy as np

from .calibration import CalibrationRanges, Range, needs_pre_activation_range
from .errors import QuantizationError
from .fixedpoint import INT32_MAX, effective_scale
from .ir import Activation, DenseLayer, FloatModel, LstmLayer
from .quantized_model import QDenseLayer, QLstmLayer, QuantizedModel, QuantParams, Requant, round_half_away

GATE_INPUT_SCALE = 2.0 ** -12   # gate pre-activations: int16 Q3.12
GATE_OUTPUT_SCALE = 2.0 ** -15  # gate outputs: int16 Q0.15
MIN_CELL_SCALE_POWER = -15      # cell range at least [-1, 1]: one step's i*g alone reaches +-1
MAX_CELL_SCALE_POWER = 2        # tanh's input multiply 3 * 2^(p + 12) * int16 must fit in int32
TABLE_OUTPUT_Q = {              # TFLite's fixed int8 output quantization of tanh and sigmoid
    Activation.TANH: QuantParams(float(np.float32(1 / 128)), 0),
    Activation.SIGMOID: QuantParams(float(np.float32(1 / 256)), -128),
}
_TABLE_FUNCTIONS = {Activation.TANH: np.tanh, Activation.SIGMOID: lambda v: 0.5 * (1 + np.tanh(0.5 * v))}


def asymmetric_int8(r: Range) -> QuantParams:
    """int8 params covering [min, max] extended to contain 0, zero point exactly representable."""
    lo, hi = min(r.min, 0.0), max(r.max, 0.0)
    if hi - lo < 1e-8:  # a constant-zero tensor: any scale represents it exactly
        hi = lo + 1e-8 * 255
    scale = float(np.float32((hi - lo) / 255.0))
    zero_point = int(np.clip(round_half_away(-128 - lo / scale), -128, 127))  # TfLiteRound, as TFLite
    return QuantParams(scale, zero_point)


def symmetric_int8(w: np.ndarray):
    """Per-tensor symmetric int8 (zero point 0, range +-127): (q, float32 scale)."""
    absmax = float(np.max(np.abs(w))) if w.size else 0.0
    scale = float(np.float32(absmax / 127.0))
    if scale == 0.0:  # all zero, or so tiny the float32 scale underflows: the weights are 0
        scale = 1.0
    q = np.clip(np.round(w.astype(np.float64) / scale), -127, 127).astype(np.int8)
    return q, scale


def quantize_bias(b: np.ndarray, scale: float, where: str) -> np.ndarray:
    q = np.round(b.astype(np.float64) / scale)
    if np.any(np.abs(q) > INT32_MAX):
        raise QuantizationError(f"{where}: bias too large for int32 at scale {scale:.3g}")
    return q.astype(np.int64)


def check_accumulator_bounds(bias: np.ndarray, weights: np.ndarray, requant: Requant, where: str) -> None:
    """Prove offline that bias + sum(w * x) times 2^max(shift, 0) fits in int32 for any int8 x,
    so the kernel's int32 arithmetic never wraps (C and simulator would otherwise diverge)."""
    worst = np.abs(bias.astype(np.int64)) + 128 * np.abs(weights.astype(np.int64)).sum(axis=-1)
    limit = INT32_MAX >> max(requant.shift, 0)
    if int(worst.max()) > limit:
        raise QuantizationError(f"{where}: accumulator may exceed int32 (worst {int(worst.max())}, limit {limit}); "
                                "the weights or ranges are extreme")


def cell_scale_power(r: Range) -> int:
    """Power-of-two cell scale: 2^ceil(log2 max|c|) / 2^15, at least 2^-15."""
    absmax = r.absmax
    if absmax <= 0:
        return MIN_CELL_SCALE_POWER
    power = max(math.ceil(math.log2(absmax)) - 15, MIN_CELL_SCALE_POWER)
    if power > MAX_CELL_SCALE_POWER:
        raise QuantizationError(f"cell state reaches {absmax:.3g} during calibration; the int16 cell state "
                                f"covers at most {2.0 ** (MAX_CELL_SCALE_POWER + 15):.0f}")
    return power


def quantize_lstm_layer(layer: LstmLayer, input_q: QuantParams, hidden_range: Range, cell_range: Range
                        ) -> QLstmLayer:
    hidden_q = asymmetric_int8(hidden_range)
    power = cell_scale_power(cell_range)
    w_x, w_h, b_x, b_h, req_x, req_h = [], [], [], [], [], []
    for g in range(4):
        qx, sx = symmetric_int8(layer.w_x[g])
        qh, sh = symmetric_int8(layer.w_h[g])
        bias_scale = effective_scale(input_q.scale, sx, divisor=1.0)
        qb = quantize_bias(layer.bias[g], bias_scale, f"layer '{layer.name}'")
        # Zero points folded offline: sum_k W (x_k - zp) = sum_k W x_k - zp * rowsum(W).
        bx = qb - input_q.zero_point * qx.astype(np.int64).sum(axis=1)
        bh = -hidden_q.zero_point * qh.astype(np.int64).sum(axis=1)
        rx = Requant.from_real(effective_scale(input_q.scale, sx, divisor=GATE_INPUT_SCALE))
        rh = Requant.from_real(effective_scale(hidden_q.scale, sh, divisor=GATE_INPUT_SCALE))
        check_accumulator_bounds(bx, qx, rx, f"layer '{layer.name}' input gates")
        check_accumulator_bounds(bh, qh, rh, f"layer '{layer.name}' recurrent gates")
        w_x.append(qx), w_h.append(qh), b_x.append(bx), b_h.append(bh), req_x.append(rx), req_h.append(rh)
    cell_scale = 2.0 ** power
    return QLstmLayer(
        name=layer.name,
        input_weights=np.stack(w_x), recurrent_weights=np.stack(w_h),
        input_bias=np.stack(b_x), recurrent_bias=np.stack(b_h),
        input_requant=tuple(req_x), recurrent_requant=tuple(req_h),
        forget_cell_requant=Requant.from_real(effective_scale(GATE_OUTPUT_SCALE, cell_scale, divisor=cell_scale)),
        input_cell_requant=Requant.from_real(
            effective_scale(GATE_OUTPUT_SCALE, GATE_OUTPUT_SCALE, divisor=cell_scale)),
        hidden_requant=Requant.from_real(
            effective_scale(GATE_OUTPUT_SCALE, GATE_OUTPUT_SCALE, divisor=hidden_q.scale)),
        input_q=input_q, hidden_q=hidden_q, cell_scale_power=power, cell_clip=0)


def activation_table(activation: Activation, input_q: QuantParams, output_q: QuantParams) -> np.ndarray:
    """int8 -> int8 table of a smooth activation, evaluated in float64 offline."""
    q = np.arange(-128, 128)
    return output_q.quantize(_TABLE_FUNCTIONS[activation](input_q.dequantize(q)))


def quantize_dense_layer(dense: DenseLayer, input_q: QuantParams, pre_range: Range, out_range: Range
                         ) -> QDenseLayer:
    table_activation = needs_pre_activation_range(dense.activation)
    output_q = asymmetric_int8(pre_range if table_activation else out_range)
    rows = [symmetric_int8(dense.w[n]) for n in range(dense.output_size)]  # per output channel
    weights = np.stack([q for q, _ in rows])
    bias, requant = [], []
    for n, (q, s) in enumerate(rows):
        qb = quantize_bias(dense.b[n:n + 1], effective_scale(input_q.scale, s, divisor=1.0),
                           f"dense layer '{dense.name}'")[0]
        bias.append(qb - input_q.zero_point * int(q.astype(np.int64).sum()))
        requant.append(Requant.from_real(effective_scale(input_q.scale, s, divisor=output_q.scale)))
        check_accumulator_bounds(np.array([bias[-1]]), q[None], requant[-1], f"dense layer '{dense.name}'")
    act_min = max(-128, output_q.zero_point) if dense.activation == Activation.RELU else -128
    table = table_q = None
    if table_activation:
        table_q = TABLE_OUTPUT_Q[dense.activation]
        table = activation_table(dense.activation, output_q, table_q)
    return QDenseLayer(name=dense.name, weights=weights, bias=np.array(bias, dtype=np.int64),
                       requant=tuple(requant), input_q=input_q, output_q=output_q,
                       activation=dense.activation, activation_min=act_min, activation_max=127,
                       table=table, table_q=table_q)


def quantize(model: FloatModel, ranges: CalibrationRanges, name: str) -> QuantizedModel:
    if (len(ranges.hidden), len(ranges.cell), len(ranges.dense_pre), len(ranges.dense_out)) != (
            len(model.lstm_layers), len(model.lstm_layers), len(model.head), len(model.head)):
        raise QuantizationError(f"calibration ranges are for {len(ranges.hidden)} LSTM and "
                                f"{len(ranges.dense_pre)} dense layers, the model has {len(model.lstm_layers)} "
                                f"and {len(model.head)}: calibrate this model")
    for layer in model.lstm_layers:
        if layer.reverse:
            raise QuantizationError(f"layer '{layer.name}' runs in reverse direction: the streaming C API "
                                    "processes steps in order; reverse and bidirectional layers are not "
                                    "supported yet")
    act_q = asymmetric_int8(ranges.input)
    lstm_layers = []
    for layer, h_range, c_range in zip(model.lstm_layers, ranges.hidden, ranges.cell):
        qlayer = quantize_lstm_layer(layer, act_q, h_range, c_range)
        lstm_layers.append(qlayer)
        act_q = qlayer.hidden_q
    head = []
    for dense, pre, out in zip(model.head, ranges.dense_pre, ranges.dense_out):
        qdense = quantize_dense_layer(dense, act_q, pre, out)
        head.append(qdense)
        act_q = qdense.result_q
    return QuantizedModel(name=name, lstm_layers=tuple(lstm_layers), head=tuple(head),
                          sequence_output=model.sequence_output, final_softmax=model.final_softmax,
                          source=model.source)
