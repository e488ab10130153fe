"""Quantizer: float model + calibration ranges -> QuantizedModel (TFLite-Micro int8x8_16 LSTM).

Everything that can be computed offline is computed here, once: int8 weights, folded int32
biases, fixed-point multipliers, the cell scale, activation tables. Scales are float32 values
and effective scales are formed in double from them, as TFLite-Micro does at prepare time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np

from .calibration import CalibrationRanges, Range, needs_pre_activation_range
from .errors import QuantizationError
from .fixedpoint import INT32_MAX, effective_scale
from .int8_activations import TABLE_OUTPUT_Q, tflm_int8_table
from .ir import Activation, BidirectionalLayer, DenseLayer, FloatModel, GruLayer, LstmLayer
from .quantized_model import QBidirectionalLayer, QDenseLayer, QGruLayer, QLstmLayer, QuantizedModel, QuantParams, Requant, round_half_away

GATE_INPUT_SCALE = 2.0 ** -12   # gate pre-activations: int16 Q3.12
GATE_OUTPUT_SCALE = 2.0 ** -15  # gate outputs: int16 Q0.15
MIN_CELL_SCALE_POWER = -15      # cell range at least [-1, 1]: one step's i*g alone reaches +-1
MAX_CELL_SCALE_POWER = 2        # tanh's input multiply 3 * 2^(p + 12) * int16 must fit in int32


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


@dataclass(frozen=True)
class GateMatrices:
    """Quantized gate matrices of a recurrent layer, one entry per gate."""

    input_weights: np.ndarray
    recurrent_weights: np.ndarray
    input_bias: np.ndarray
    recurrent_bias: np.ndarray
    input_requant: Tuple[Requant, ...]
    recurrent_requant: Tuple[Requant, ...]


def quantize_gate_matrices(w_x, w_h, bias_x, bias_h, input_q: QuantParams, hidden_q: QuantParams,
                           where: str) -> GateMatrices:
    """Per gate g: int8 symmetric W_x[g], W_h[g]; int32 biases with the zero points folded in;
    multipliers to the gates' Q3.12 pre-activation scale. bias_x is at scale s_x s_Wx, bias_h
    (the recurrent bias, zero for LSTM) at scale s_h s_Wh."""
    w_xq, w_hq, b_x, b_h, req_x, req_h = [], [], [], [], [], []
    for g in range(len(w_x)):
        qx, sx = symmetric_int8(w_x[g])
        qh, sh = symmetric_int8(w_h[g])
        qbx = quantize_bias(bias_x[g], effective_scale(input_q.scale, sx, divisor=1.0), where)
        qbh = quantize_bias(bias_h[g], effective_scale(hidden_q.scale, sh, divisor=1.0), where)
        # Zero points folded offline: sum_k W (x_k - zp) = sum_k W x_k - zp * rowsum(W).
        bx = qbx - input_q.zero_point * qx.astype(np.int64).sum(axis=1)
        bh = qbh - hidden_q.zero_point * qh.astype(np.int64).sum(axis=1)
        rx = Requant.from_real(effective_scale(input_q.scale, sx, divisor=GATE_INPUT_SCALE))
        rh = Requant.from_real(effective_scale(hidden_q.scale, sh, divisor=GATE_INPUT_SCALE))
        check_accumulator_bounds(bx, qx, rx, f"{where} input gates")
        check_accumulator_bounds(bh, qh, rh, f"{where} recurrent gates")
        w_xq.append(qx), w_hq.append(qh), b_x.append(bx), b_h.append(bh), req_x.append(rx), req_h.append(rh)
    return GateMatrices(np.stack(w_xq), np.stack(w_hq), np.stack(b_x), np.stack(b_h), tuple(req_x), tuple(req_h))


def quantize_gate_clip(clip) -> int:
    """ONNX clip in the gates' Q3.12 scale (0: none)."""
    return 0 if clip is None else int(min(round_half_away(clip / GATE_INPUT_SCALE), 32767))


def quantize_peepholes(layer: LstmLayer, power: int) -> dict:
    """Peephole vectors as int16 symmetric (one scale per gate) and the multipliers that bring
    p * c (int16 x int16) to the gates' Q3.12 scale. Empty for a layer without peepholes."""
    if layer.peephole is None:
        return {}
    weights, requant = [], []
    for g in range(3):
        absmax = float(np.max(np.abs(layer.peephole[g])))
        scale = float(np.float32(absmax / 32767.0)) or 1.0
        weights.append(np.clip(round_half_away(layer.peephole[g] / scale), -32767, 32767).astype(np.int16))
        requant.append(Requant.from_real(effective_scale(scale, 2.0 ** power, divisor=GATE_INPUT_SCALE)))
        if requant[-1].shift > 0:  # |p * c| <= 2^30: no room for a left shift
            raise QuantizationError(f"layer '{layer.name}': peephole weights of {absmax:.3g} are too large for the "
                                    "int16 cell state")
    return {"peephole_weights": np.stack(weights), "peephole_requant": tuple(requant)}


def quantize_cell_state(c: np.ndarray, power: int) -> np.ndarray:
    """A float cell state in the int16 cell scale 2^power (saturating)."""
    return np.clip(round_half_away(np.asarray(c, dtype=np.float64) / 2.0 ** power), -32768, 32767).astype(np.int16)


def lstm_cell_requants(cell_scale: float, hidden_scale: float) -> dict:
    """The LSTM's three inter-gate multipliers, as TFLM forms them from the tensors' scales."""
    return dict(
        forget_cell_requant=Requant.from_real(effective_scale(GATE_OUTPUT_SCALE, cell_scale, divisor=cell_scale)),
        input_cell_requant=Requant.from_real(effective_scale(GATE_OUTPUT_SCALE, GATE_OUTPUT_SCALE,
                                                             divisor=cell_scale)),
        hidden_requant=Requant.from_real(effective_scale(GATE_OUTPUT_SCALE, GATE_OUTPUT_SCALE,
                                                         divisor=hidden_scale)))


def quantize_lstm_layer(layer: LstmLayer, input_q: QuantParams, hidden_range: Range, cell_range: Range
                        ) -> QLstmLayer:
    hidden_q = asymmetric_int8(hidden_range)
    power = cell_scale_power(cell_range)
    gates = quantize_gate_matrices(layer.w_x, layer.w_h, layer.bias, np.zeros_like(layer.bias), input_q,
                                   hidden_q, f"layer '{layer.name}'")
    return QLstmLayer(
        name=layer.name,
        input_weights=gates.input_weights, recurrent_weights=gates.recurrent_weights,
        input_bias=gates.input_bias, recurrent_bias=gates.recurrent_bias,
        input_requant=gates.input_requant, recurrent_requant=gates.recurrent_requant,
        **lstm_cell_requants(2.0 ** power, hidden_q.scale),
        initial_hidden=None if layer.initial_h is None else hidden_q.quantize(layer.initial_h),
        initial_cell=None if layer.initial_c is None else quantize_cell_state(layer.initial_c, power),
        gate_clip=quantize_gate_clip(layer.clip), input_forget=bool(layer.input_forget),
        **quantize_peepholes(layer, power),
        input_q=input_q, hidden_q=hidden_q, cell_scale_power=power, cell_clip=0)


def quantize_gru_layer(layer: GruLayer, input_q: QuantParams, hidden_range: Range) -> QGruLayer:
    """Biases outside the reset product go to the input side (z, r always; n without
    linear_before_reset); with linear_before_reset, Rb_n stays with the recurrent term it is
    added to before the reset gate multiplies it."""
    hidden_q = asymmetric_int8(hidden_range)
    bias_x = np.array(layer.b_x, dtype=np.float64)
    bias_h = np.zeros_like(bias_x)
    bias_x[:2] += layer.b_h[:2]
    if layer.linear_before_reset:
        bias_h[2] = layer.b_h[2]
    else:
        bias_x[2] += layer.b_h[2]
    gates = quantize_gate_matrices(layer.w_x, layer.w_h, bias_x, bias_h, input_q, hidden_q,
                                   f"GRU layer '{layer.name}'")
    return QGruLayer(
        name=layer.name,
        input_weights=gates.input_weights, recurrent_weights=gates.recurrent_weights,
        input_bias=gates.input_bias, recurrent_bias=gates.recurrent_bias,
        input_requant=gates.input_requant, recurrent_requant=gates.recurrent_requant,
        hidden_to_q15_requant=Requant.from_real(effective_scale(hidden_q.scale, divisor=GATE_OUTPUT_SCALE)),
        q15_to_hidden_requant=Requant.from_real(effective_scale(GATE_OUTPUT_SCALE, divisor=hidden_q.scale)),
        input_q=input_q, hidden_q=hidden_q, linear_before_reset=layer.linear_before_reset,
        initial_hidden=None if layer.initial_h is None else hidden_q.quantize(layer.initial_h),
        gate_clip=quantize_gate_clip(layer.clip))


def activation_table(activation: Activation, input_q: QuantParams, output_q: QuantParams) -> np.ndarray:
    """int8 -> int8 table of tanh / sigmoid: TFLite Micro's int8 TANH / LOGISTIC, entry for entry.

    TFLM computes these in gemmlowp fixed point, not in float: a float64 table differed from it in
    a few entries per thousand tables (by one step), so the table is filled by an exact
    re-implementation of TFLM's integer kernel (int8_activations.py), checked against tflite-micro."""
    table, table_q = tflm_int8_table(activation, input_q)
    if output_q != table_q:
        raise QuantizationError(f"{activation.value} output quantization {output_q} is not TFLite's {table_q}")
    return table


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


def quantize_recurrent_layer(layer, input_q: QuantParams, h_range: Range, c_range: Range):
    if isinstance(layer, BidirectionalLayer):
        if layer.merge != "concat":
            raise QuantizationError(f"bidirectional layer '{layer.name}': merge mode '{layer.merge}' is not "
                                    "supported yet in the integer path (concat is)")
        # One hidden (and cell) quantization for both directions, from the merged range, so the
        # concatenated int8 output has a single scale and zero point for the next layer.
        return QBidirectionalLayer(name=layer.name,
                                   forward=quantize_recurrent_layer(layer.forward, input_q, h_range, c_range),
                                   backward=quantize_recurrent_layer(layer.backward, input_q, h_range, c_range))
    if isinstance(layer, GruLayer):
        return quantize_gru_layer(layer, input_q, h_range)
    return quantize_lstm_layer(layer, input_q, h_range, c_range)


def quantize(model: FloatModel, ranges: CalibrationRanges, name: str, max_steps: int = 0) -> QuantizedModel:
    """All integers of the compiled model. `max_steps` sizes the window of models with
    bidirectional layers (required for them, ignored otherwise)."""
    if (len(ranges.hidden), len(ranges.cell), len(ranges.dense_pre), len(ranges.dense_out)) != (
            len(model.recurrent_layers), len(model.recurrent_layers), len(model.head), len(model.head)):
        raise QuantizationError(f"calibration ranges are for {len(ranges.hidden)} LSTM and "
                                f"{len(ranges.dense_pre)} dense layers, the model has {len(model.recurrent_layers)} "
                                f"and {len(model.head)}: calibrate this model")
    for layer in model.recurrent_layers:
        if layer.reverse:
            raise QuantizationError(f"layer '{layer.name}' runs in reverse direction only: not supported yet "
                                    "(bidirectional layers are)")
    windowed = any(isinstance(l, BidirectionalLayer) for l in model.recurrent_layers)
    if windowed and max_steps <= 0:
        raise QuantizationError("the model has bidirectional layers, which need the whole sequence: give its "
                                "maximum length (--max-steps N)")
    act_q = asymmetric_int8(ranges.input)
    recurrent_layers = []
    for layer, h_range, c_range in zip(model.recurrent_layers, ranges.hidden, ranges.cell):
        qlayer = quantize_recurrent_layer(layer, act_q, h_range, c_range)
        recurrent_layers.append(qlayer)
        act_q = qlayer.hidden_q
    head = []
    for dense, pre, out in zip(model.head, ranges.dense_pre, ranges.dense_out):
        qdense = quantize_dense_layer(dense, act_q, pre, out)
        head.append(qdense)
        act_q = qdense.result_q
    return QuantizedModel(name=name, recurrent_layers=tuple(recurrent_layers), head=tuple(head),
                          sequence_output=model.sequence_output, final_softmax=model.final_softmax,
                          source=model.source, last_step_from=model.last_step_from,
                          max_steps=max_steps if windowed else 0)
