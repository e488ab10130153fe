"""TFLite (`.tflite`) -> QuantizedModel (full-integer models) or float IR (float models).

A full-integer LSTM from the TFLite converter (Keras 2 -> TFLite with a representative dataset)
is already quantized: its UNIDIRECTIONAL_SEQUENCE_LSTM is TensorFlow Lite Micro's int8x8_16
LSTM, the scheme lstm-edge compiles. Such a model is imported straight into a QuantizedModel
with the model's own scales, zero points, weights and biases; no calibration is involved. Every
derived integer (folded biases, multipliers, the cell scale power and the quantized cell clip)
is computed the way TFLite Micro computes it when it prepares the model, so the generated C
gives the interpreter's numbers exactly.

A float `.tflite` LSTM (converted without quantization) is read into the float IR and goes
through calibration and quantization like an ONNX model.

The walk follows the graph output back to the graph input through one chain of operators:

    [QUANTIZE] -> UNIDIRECTIONAL_SEQUENCE_LSTM x L -> [last step: STRIDED_SLICE / GATHER]
    -> FULLY_CONNECTED x D (fused NONE or RELU) -> [SOFTMAX / LOG_SOFTMAX] -> [DEQUANTIZE]

with RESHAPE / SQUEEZE / EXPAND_DIMS anywhere after the first LSTM when they only regroup size-1
axes. Anything else on that chain is refused with one line naming the operator.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..errors import ModelFormatError, UnsupportedModelError
from ..fixedpoint import effective_scale
from ..ir import Activation, DenseLayer, FloatModel, LstmLayer
from ..quantized_model import QDenseLayer, QLstmLayer, QuantizedModel, QuantParams, Requant
from ..quantizer import GATE_INPUT_SCALE, check_accumulator_bounds, lstm_cell_requants
from ..tflite import schema as S
from ..tflite.reader import Model, Operator, Subgraph, Tensor, read_tflite

OP = S.BuiltinOperator
TT = S.TensorType
ACT = S.ActivationFunctionType

SHAPE_OPS = {OP.RESHAPE, OP.SQUEEZE, OP.EXPAND_DIMS}
LAST_STEP_OPS = {OP.STRIDED_SLICE, OP.GATHER}
# The cell scale 2^p must keep TFLM's tanh input multiply 3 * 2^(p + 12) * int16 within int32,
# and its rounding shift (for p < -12) meaningful.
MAX_CELL_SCALE_POWER = 2
MIN_CELL_SCALE_POWER = -30

_HINTS = {
    OP.WHILE: "the converter wrote the LSTM as a WHILE loop, not as the fused UNIDIRECTIONAL_SEQUENCE_LSTM; "
              "convert a legacy Keras 2 model (tf-keras, TF_USE_LEGACY_KERAS=1) cloned with batch_size=1",
    OP.REVERSE_V2: "bidirectional LSTMs (REVERSE_V2 + two UNIDIRECTIONAL_SEQUENCE_LSTM + CONCATENATION) are not "
                   "supported: the streaming C API runs the sequence forward only",
    OP.BIDIRECTIONAL_SEQUENCE_LSTM: "bidirectional LSTMs are not supported: the streaming C API runs the "
                                    "sequence forward only",
    OP.LSTM: "the non-sequence LSTM operator is not supported; convert so the model has "
             "UNIDIRECTIONAL_SEQUENCE_LSTM",
    OP.TANH: "a separate TANH (a Dense layer with activation='tanh') is not supported in full-integer models yet; "
             "use a linear or ReLU dense layer",
    OP.LOGISTIC: "a separate LOGISTIC (a Dense layer with activation='sigmoid') is not supported in full-integer "
                 "models yet; use a linear or ReLU dense layer",
    OP.CONCATENATION: "concatenating tensors (e.g. of a bidirectional layer) is not supported",
}


def _refuse(where: str, what: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{where}: {what}")


def _safe_name(name: str, fallback: str) -> str:
    """A layer name fit for the C comments the generator writes (no '*/', printable ASCII only)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.:;/\-]", "_", name).replace("*/", "_")[:80]
    return cleaned or fallback


# ------------------------------------------------------------------------------- the chain

@dataclass
class _Dense:
    op: Operator
    activation_op: Optional[Operator] = None   # a separate TANH / LOGISTIC / RELU (float models only)


@dataclass
class _Chain:
    """What the walk found: the ops that make the model and how the data flows through them."""

    graph_input: Tensor
    lstm_ops: List[Operator] = field(default_factory=list)
    dense: List[_Dense] = field(default_factory=list)
    sequence_output: bool = True
    final_softmax: Optional[str] = None
    input_quantize: Optional[Operator] = None
    output_dequantize: Optional[Operator] = None
    time_major: bool = False
    notes: List[str] = field(default_factory=list)
    output_tensor: Optional[Tensor] = None   # the tensor the compiled model outputs (before a dropped softmax)


class _Walk:
    def __init__(self, model: Model, output: Optional[str], where: str):
        self.model, self.where = model, where
        self.sg: Subgraph = model.subgraphs[0]
        self.tensors = self.sg.tensors
        self.output_index = self._pick_output(output)

    # -- helpers
    def t(self, index: int) -> Tensor:
        return self.tensors[index]

    def fail(self, op: Optional[Operator], what: str) -> UnsupportedModelError:
        return _refuse(f"{self.where}: {op.describe()}" if op is not None else self.where, what)

    def _pick_output(self, output: Optional[str]) -> int:
        outs = self.sg.outputs
        if output is not None:
            for i in outs:
                if self.t(i).name == output:
                    return i
            names = ", ".join(f"'{self.t(i).name}'" for i in outs)
            raise UnsupportedModelError(f"{self.where}: no graph output named '{output}' (outputs: {names})")
        if len(outs) != 1:
            names = ", ".join(f"'{self.t(i).name}'" for i in outs)
            raise UnsupportedModelError(f"{self.where}: the model has {len(outs)} outputs ({names}); "
                                        "choose one with --output")
        return outs[0]

    def _ops_chain(self) -> List[Operator]:
        """The operators from the graph input to the chosen output, in execution order."""
        if len(self.sg.inputs) != 1:
            raise UnsupportedModelError(f"{self.where}: the model has {len(self.sg.inputs)} inputs; lstm-edge "
                                        "compiles models with one input sequence")
        producer = {}
        for op in self.sg.operators:
            for o in op.outputs:
                producer[o] = op
        present = {op.opcode for op in self.sg.operators if op.custom_code is None}
        chain, current = [], self.output_index
        while current != self.sg.inputs[0]:
            op = producer.get(current)
            if op is None:
                raise UnsupportedModelError(f"{self.where}: the output does not depend on the input "
                                            f"({self.t(current).describe()} is not computed from it)")
            if op.custom_code is not None:
                raise self.fail(op, "custom operators are not supported")
            if op.opcode in _HINTS and not (op.opcode in (OP.TANH, OP.LOGISTIC) and self.float_graph):
                hint = _HINTS[op.opcode]
                if op.opcode == OP.CONCATENATION and OP.REVERSE_V2 in present:
                    hint = _HINTS[OP.REVERSE_V2]
                raise self.fail(op, hint)
            if not op.inputs or op.inputs[0] < 0:
                raise self.fail(op, "has no data input")
            # Every input but the data input must be constant (weights, shapes) or an LSTM state.
            for k, i in enumerate(op.inputs[1:], start=1):
                if i >= 0 and self.t(i).data is None and not self.t(i).is_variable:
                    raise self.fail(op, f"input {k} ({self.t(i).describe()}) is computed, not constant: only a "
                                        "single chain of operators is supported")
            chain.append(op)
            current = op.inputs[0]
        if OP.REVERSE_V2 in present or OP.BIDIRECTIONAL_SEQUENCE_LSTM in present:
            op = next(o for o in self.sg.operators if o.opcode in (OP.REVERSE_V2, OP.BIDIRECTIONAL_SEQUENCE_LSTM))
            raise self.fail(op, _HINTS[op.opcode])
        return chain[::-1]

    @property
    def float_graph(self) -> bool:
        """True when the (first) LSTM is a float one: then separate activation ops are allowed."""
        lstm = next((op for op in self.sg.operators if op.opcode == OP.UNIDIRECTIONAL_SEQUENCE_LSTM), None)
        return lstm is not None and len(lstm.inputs) > 2 and lstm.inputs[2] >= 0 and \
            self.t(lstm.inputs[0]).type == TT.FLOAT32 and self.t(lstm.inputs[2]).type == TT.FLOAT32

    # -- the walk
    def run(self) -> _Chain:
        ops = self._ops_chain()
        chain = _Chain(graph_input=self.t(self.sg.inputs[0]))
        time_axis: Optional[int] = None   # axis of the time steps in the current tensor; None once selected
        started = selected = False
        head_started = ended = False
        for n, op in enumerate(ops):
            x, y = self.t(op.inputs[0]), self.t(op.outputs[0])
            last = n == len(ops) - 1
            if ended and op.opcode != OP.DEQUANTIZE:
                raise self.fail(op, "only DEQUANTIZE may follow the final softmax")
            if op.opcode == OP.QUANTIZE:
                if n != 0 or x.type != TT.FLOAT32 or y.type not in (TT.INT8,):
                    raise self.fail(op, f"QUANTIZE is supported only on the float input of the model "
                                        f"({x.type_name} -> {y.type_name} here)")
                chain.input_quantize = op
            elif op.opcode == OP.DEQUANTIZE:
                if not last or y.type != TT.FLOAT32:
                    raise self.fail(op, "DEQUANTIZE is supported only on the output of the model")
                chain.output_dequantize = op
            elif op.opcode == OP.UNIDIRECTIONAL_SEQUENCE_LSTM:
                if head_started or selected:
                    raise self.fail(op, "an LSTM after the dense head or after the last step was taken is not "
                                        "supported")
                tm = bool(op.options.get("time_major", False))
                if len(x.shape) != 3:
                    raise self.fail(op, f"LSTM input {x.describe()} is not 3-D")
                axis = 0 if tm else 1
                if started and time_axis != axis:
                    raise self.fail(op, "this LSTM reads the time steps on another axis than the layer before")
                batch = x.shape[1 - axis]
                if batch != 1:
                    raise self.fail(op, f"batch size {batch}: convert the model with a batch of 1 "
                                        "(the C runs one sequence per state)")
                if not started:
                    chain.time_major = tm
                started, time_axis = True, axis
                chain.lstm_ops.append(op)
            elif op.opcode in SHAPE_OPS:
                if not started:
                    raise self.fail(op, "only QUANTIZE may come before the first LSTM")
                time_axis = self._follow(op, x.shape, y.shape, time_axis)
            elif op.opcode in LAST_STEP_OPS:
                if not started or selected:
                    raise self.fail(op, f"{op.name} is supported only once, to take the last step of the "
                                        "LSTM output")
                self._check_last_step(op, x, y, time_axis)
                selected, time_axis = True, None
            elif op.opcode == OP.FULLY_CONNECTED:
                if not started:
                    raise self.fail(op, "a dense layer before the first LSTM is not supported")
                head_started = True
                time_axis = self._follow(op, x.shape[:-1] + (1,), y.shape[:-1] + (1,), time_axis)
                chain.dense.append(_Dense(op))
            elif op.opcode in (OP.TANH, OP.LOGISTIC, OP.RELU):
                # A Dense activation kept as its own op: float models only (the quantizer makes it a
                # table); TFLM's int8 TANH/LOGISTIC/RELU kernels are not compiled.
                if not self.float_graph:
                    raise self.fail(op, _HINTS.get(op.opcode, f"a separate {op.name} is not supported in "
                                                              "full-integer models; fuse it into FULLY_CONNECTED"))
                if not chain.dense or chain.dense[-1].activation_op is not None or \
                        ops[n - 1].opcode != OP.FULLY_CONNECTED or \
                        ops[n - 1].options.get("fused_activation_function", 0) != ACT.NONE:
                    raise self.fail(op, f"{op.name} is supported only right after a linear FULLY_CONNECTED")
                chain.dense[-1].activation_op = op
            elif op.opcode in (OP.SOFTMAX, OP.LOG_SOFTMAX):
                if not started:
                    raise self.fail(op, "a softmax before the first LSTM is not supported")
                beta = op.options.get("beta", 1.0) if op.opcode == OP.SOFTMAX else 1.0
                if beta != 1.0:
                    raise self.fail(op, f"softmax with beta {beta:g} is not supported (only 1)")
                chain.final_softmax = "softmax" if op.opcode == OP.SOFTMAX else "logsoftmax"
                chain.output_tensor = x
                ended = True
            else:
                raise self.fail(op, f"operator {op.name} is not supported (supported: UNIDIRECTIONAL_SEQUENCE_LSTM, "
                                    "FULLY_CONNECTED, STRIDED_SLICE/GATHER of the last step, RESHAPE, SQUEEZE, "
                                    "SOFTMAX, QUANTIZE/DEQUANTIZE at the edges)")
            if op.opcode not in (OP.SOFTMAX, OP.LOG_SOFTMAX, OP.DEQUANTIZE):
                chain.output_tensor = y
        if not chain.lstm_ops:
            raise UnsupportedModelError(f"{self.where}: no UNIDIRECTIONAL_SEQUENCE_LSTM on the path from the "
                                        "input to the output")
        chain.sequence_output = not selected
        return chain

    def _follow(self, op: Operator, shape_in, shape_out, time_axis: Optional[int]) -> Optional[int]:
        """Where the time axis goes through an op that only regroups the leading (size-1) axes."""
        shape_in, shape_out = tuple(shape_in), tuple(shape_out)
        if not shape_in or not shape_out or shape_in[-1] != shape_out[-1] or \
                math.prod(shape_in[:-1]) != math.prod(shape_out[:-1]):
            raise self.fail(op, f"changes the feature axis ({list(shape_in)} -> {list(shape_out)}); only "
                                "reshapes of the leading size-1 axes are supported")
        if time_axis is None:
            return None
        steps = shape_in[time_axis]
        candidates = [k for k, d in enumerate(shape_out[:-1]) if d == steps]
        if not candidates:
            return None  # a single step (T = 1) whose axis was dropped: still one output per step
        return candidates[0]

    def _constant_ints(self, op: Operator, k: int, rank: int) -> List[int]:
        t = self.t(op.inputs[k])
        if t.data is None or t.type not in (TT.INT32, TT.INT64) or t.data.size != rank:
            raise self.fail(op, f"input {k} must be a constant vector of {rank} integers")
        return [int(v) for v in t.data.ravel()]

    def _check_last_step(self, op: Operator, x: Tensor, y: Tensor, time_axis: Optional[int]) -> None:
        """The op must select exactly the last time step and keep everything else."""
        shape = tuple(x.shape)
        if time_axis is None:
            raise self.fail(op, "the input has no time axis to take the last step of")
        steps = shape[time_axis]
        if op.opcode == OP.GATHER:
            axis = op.options.get("axis", 0)
            axis = axis + len(shape) if axis < 0 else axis
            idx = self.t(op.inputs[1])
            if op.options.get("batch_dims", 0) != 0 or axis != time_axis or idx.data is None or \
                    idx.data.size != 1 or int(idx.data.ravel()[0]) != steps - 1:
                raise self.fail(op, f"GATHER is supported only to take the last step (index {steps - 1} on "
                                    f"axis {time_axis})")
            expected = shape[:axis] + tuple(idx.shape) + shape[axis + 1:]
        else:
            o = op.options
            if o.get("ellipsis_mask", 0) or o.get("new_axis_mask", 0):
                raise self.fail(op, "STRIDED_SLICE with ellipsis or new-axis masks is not supported")
            rank = len(shape)
            begin, end, strides = (self._constant_ints(op, k, rank) for k in (1, 2, 3))
            expected = []
            for axis in range(rank):
                dim, bit = shape[axis], 1 << axis
                if o.get("shrink_axis_mask", 0) & bit:
                    b = begin[axis] + dim if begin[axis] < 0 else begin[axis]
                    chosen = [b] if 0 <= b < dim else []
                else:
                    if strides[axis] == 0:
                        raise self.fail(op, "STRIDED_SLICE with stride 0")
                    b = None if o.get("begin_mask", 0) & bit else begin[axis]
                    e = None if o.get("end_mask", 0) & bit else end[axis]
                    if o.get("offset", False) and b is not None and e is not None:
                        e = b + e
                    chosen = list(range(dim)[slice(b, e, strides[axis])])
                    expected.append(len(chosen))
                want = [steps - 1] if axis == time_axis else list(range(dim))
                if chosen != want:
                    raise self.fail(op, f"STRIDED_SLICE is supported only to take the last step: it selects "
                                        f"{chosen[:8]} on axis {axis} of {list(shape)}")
            expected = tuple(expected)
        if tuple(y.shape) != tuple(expected):
            raise self.fail(op, f"output shape {list(y.shape)} does not match the selection {list(expected)}")


# ------------------------------------------------------------------------------- checks

def _per_tensor(walk: _Walk, op: Operator, t: Tensor, what: str) -> QuantParams:
    q = t.quantization
    if q is None or q.details_type:
        raise walk.fail(op, f"{what} {t.describe()} has no affine quantization")
    if q.per_channel:
        raise walk.fail(op, f"{what} {t.describe()} is quantized per channel; lstm-edge needs one scale")
    zp = int(q.zero_points()[0])
    scale = float(q.scale[0])
    if not (math.isfinite(scale) and scale > 0):
        raise walk.fail(op, f"{what} {t.describe()} has scale {scale}")
    if t.type == TT.INT8 and not -128 <= zp <= 127:
        raise walk.fail(op, f"{what} {t.describe()} has zero point {zp} outside int8")
    return QuantParams(scale, zp)


def _require_type(walk: _Walk, op: Operator, t: Tensor, types, what: str) -> None:
    if t.type not in types:
        names = "/".join(S.TensorType(x).name for x in types)
        raise walk.fail(op, f"{what} {t.describe()} is {t.type_name}; lstm-edge needs {names}")


def _check_lstm_variant(walk: _Walk, op: Operator) -> None:
    ins = op.inputs
    if len(ins) != S.LSTM_INPUT_COUNT:
        raise walk.fail(op, f"has {len(ins)} inputs, expected {S.LSTM_INPUT_COUNT}")
    present = lambda k: ins[k] >= 0  # noqa: E731
    if not present(S.LSTM_INPUT_WEIGHTS[0]) or not present(S.LSTM_RECURRENT_WEIGHTS[0]):
        raise walk.fail(op, "CIFG LSTMs (coupled input and forget gates: no input gate weights) are not supported")
    if any(present(k) for k in S.LSTM_PEEPHOLE_WEIGHTS):
        raise walk.fail(op, "peephole connections (cell-to-gate weights) are not supported")
    if present(S.LSTM_PROJECTION_WEIGHTS) or present(S.LSTM_PROJECTION_BIAS):
        raise walk.fail(op, "LSTM projection (proj_size) is not supported")
    if any(present(k) for k in S.LSTM_LAYER_NORM_WEIGHTS):
        raise walk.fail(op, "layer-normalized LSTMs are not supported")
    for k in S.LSTM_INPUT_WEIGHTS + S.LSTM_RECURRENT_WEIGHTS:
        if not present(k):
            raise walk.fail(op, f"LSTM weight input {k} is missing")
    if not present(S.LSTM_OUTPUT_STATE) or not present(S.LSTM_CELL_STATE):
        raise walk.fail(op, "the LSTM has no hidden or cell state tensor")
    act = op.options.get("fused_activation_function", ACT.TANH)
    if act != ACT.TANH:
        name = ACT(act).name if act in ACT._value2member_map_ else str(act)
        raise walk.fail(op, f"the LSTM's cell activation is {name}; only TANH is supported")
    if op.options.get("diagonal_recurrent_tensors", False):
        raise walk.fail(op, "diagonal recurrent weights are not supported")


def _lstm_kind(walk: _Walk, op: Operator) -> str:
    """'int8' (int8x8_16), 'float', or a refusal for the other variants."""
    x = walk.t(op.inputs[0])
    w = walk.t(op.inputs[S.LSTM_INPUT_WEIGHTS[1]])
    weights = {walk.t(op.inputs[k]).type for k in S.LSTM_INPUT_WEIGHTS + S.LSTM_RECURRENT_WEIGHTS}
    if x.type == TT.INT8 and weights == {TT.INT8}:
        return "int8"
    if x.type == TT.FLOAT32 and weights == {TT.FLOAT32}:
        return "float"
    if x.type == TT.FLOAT32 and weights & {TT.INT8, TT.UINT8}:
        raise walk.fail(op, "hybrid (dynamic-range) LSTM: float activations with int8 weights is not supported; "
                            "convert with full-integer quantization (a representative dataset, int8 input and "
                            "output) or without quantization")
    if x.type == TT.INT16:
        raise walk.fail(op, "16x8 LSTMs (int16 activations) are not supported; lstm-edge compiles int8x8_16")
    raise walk.fail(op, f"LSTM with {x.type_name} input and {w.type_name} weights is not supported "
                        "(supported: int8x8_16 full-integer, or float32)")


# ------------------------------------------------------------------------------- int8 models

def _q_lstm(walk: _Walk, op: Operator, input_q: QuantParams, index: int) -> QLstmLayer:
    t = walk.t
    name = _safe_name(t(op.outputs[0]).name, f"lstm{index}")
    x = t(op.inputs[0])
    h_state, c_state = t(op.inputs[S.LSTM_OUTPUT_STATE]), t(op.inputs[S.LSTM_CELL_STATE])
    _require_type(walk, op, h_state, (TT.INT8,), "hidden state")
    _require_type(walk, op, c_state, (TT.INT16,), "cell state")
    _require_type(walk, op, t(op.outputs[0]), (TT.INT8,), "output")
    # TFLM runs the recurrent products, the reset value and the output requantization with the
    # hidden-state tensor's own parameters (input 18), whatever the output tensor declares.
    hidden_q = _per_tensor(walk, op, h_state, "hidden state")
    cell_q = _per_tensor(walk, op, c_state, "cell state")
    if cell_q.zero_point != 0:
        raise walk.fail(op, f"cell state {c_state.describe()} has zero point {cell_q.zero_point}, not 0")
    mantissa, exponent = math.frexp(cell_q.scale)
    if mantissa != 0.5:
        raise walk.fail(op, f"cell state scale {cell_q.scale!r} is not a power of two (TFLM's integer tanh needs one)")
    power = exponent - 1
    if not MIN_CELL_SCALE_POWER <= power <= MAX_CELL_SCALE_POWER:
        raise walk.fail(op, f"cell state scale 2^{power} is outside the supported 2^{MIN_CELL_SCALE_POWER}.."
                            f"2^{MAX_CELL_SCALE_POWER}")
    w_x, w_h, b_x, b_h, r_x, r_h = [], [], [], [], [], []
    hidden = input_size = None
    for g in range(4):
        wx_t, wh_t = t(op.inputs[S.LSTM_INPUT_WEIGHTS[g]]), t(op.inputs[S.LSTM_RECURRENT_WEIGHTS[g]])
        for wt, what in ((wx_t, "input weights"), (wh_t, "recurrent weights")):
            _require_type(walk, op, wt, (TT.INT8,), what)
            if wt.data is None or wt.data.ndim != 2:
                raise walk.fail(op, f"{what} {wt.describe()} must be a constant matrix")
        wx_q = _per_tensor(walk, op, wx_t, "input weights")
        wh_q = _per_tensor(walk, op, wh_t, "recurrent weights")
        if wx_q.zero_point or wh_q.zero_point:
            raise walk.fail(op, "LSTM weights must be symmetric (zero point 0)")
        qx, qh = wx_t.data.astype(np.int64), wh_t.data.astype(np.int64)
        hidden, input_size = qx.shape[0], qx.shape[1]
        if qh.shape != (hidden, hidden) or input_size != x.shape[-1]:
            raise walk.fail(op, f"LSTM weight shapes {list(qx.shape)} and {list(qh.shape)} do not fit input "
                                f"{list(x.shape)}")
        bias = np.zeros(hidden, dtype=np.int64)
        if op.inputs[S.LSTM_GATE_BIASES[g]] >= 0:
            bt = t(op.inputs[S.LSTM_GATE_BIASES[g]])
            _require_type(walk, op, bt, (TT.INT32,), "gate bias")
            if bt.data is None or bt.data.shape != (hidden,):
                raise walk.fail(op, f"gate bias {bt.describe()} must be a constant vector of {hidden}")
            bias = bt.data.astype(np.int64)
        # Zero points folded offline, as TFLM's fully connected adds input_offset = -zp per element.
        bx = bias - input_q.zero_point * qx.sum(axis=1)
        bh = -hidden_q.zero_point * qh.sum(axis=1)
        # double(s_x) * double(s_w) / double(2^-12), as the tflite-micro oracle computes it. (The
        # float32 product float(s_x * s_w) gives a multiplier a few units off in the last bits and
        # differs from the oracle on about 1 sequence in 5,000: measured on the fixtures.)
        rx = Requant.from_real(effective_scale(input_q.scale, wx_q.scale, divisor=GATE_INPUT_SCALE))
        rh = Requant.from_real(effective_scale(hidden_q.scale, wh_q.scale, divisor=GATE_INPUT_SCALE))
        check_accumulator_bounds(bx, qx, rx, f"{walk.where}: layer '{name}' input gates")
        check_accumulator_bounds(bh, qh, rh, f"{walk.where}: layer '{name}' recurrent gates")
        w_x.append(qx), w_h.append(qh), b_x.append(bx), b_h.append(bh), r_x.append(rx), r_h.append(rh)
    if h_state.data is not None or c_state.data is not None:
        if (h_state.data is not None and np.any(h_state.data != hidden_q.zero_point)) or \
                (c_state.data is not None and np.any(c_state.data != 0)):
            raise walk.fail(op, "non-zero initial LSTM states are not supported")
    clip = float(op.options.get("cell_clip", 0.0))
    quantized_clip = 0
    if clip > 0:  # TFLM: static_cast<int16_t>(clamp(double(clip) / double(scale), -32768, 32767))
        quantized_clip = int(min(max(clip / cell_q.scale, -32768.0), 32767.0))
        if quantized_clip <= 0:
            raise walk.fail(op, f"cell clip {clip:g} is below one step of the cell state scale")
    return QLstmLayer(
        name=name,
        input_weights=np.stack(w_x), recurrent_weights=np.stack(w_h),
        input_bias=np.stack(b_x), recurrent_bias=np.stack(b_h),
        input_requant=tuple(r_x), recurrent_requant=tuple(r_h),
        **lstm_cell_requants(cell_q.scale, hidden_q.scale),
        input_q=input_q, hidden_q=hidden_q, cell_scale_power=power, cell_clip=quantized_clip)


def _q_dense(walk: _Walk, dense: _Dense, index: int) -> QDenseLayer:
    op, t = dense.op, walk.t
    x, w_t, y = t(op.inputs[0]), t(op.inputs[1]), t(op.outputs[0])
    _require_type(walk, op, x, (TT.INT8,), "input")
    _require_type(walk, op, w_t, (TT.INT8,), "weights")
    _require_type(walk, op, y, (TT.INT8,), "output")
    if op.options.get("weights_format", 0) != 0:
        raise walk.fail(op, "shuffled weight formats are not supported")
    if w_t.data is None or w_t.data.ndim != 2:
        raise walk.fail(op, f"weights {w_t.describe()} must be a constant matrix")
    weights = w_t.data.astype(np.int64)
    outputs, inputs = weights.shape
    if x.shape[-1] != inputs or y.shape[-1] != outputs:
        raise walk.fail(op, f"weights {list(weights.shape)} do not fit input {list(x.shape)} and output "
                            f"{list(y.shape)}")
    input_q = _per_tensor(walk, op, x, "input")
    output_q = _per_tensor(walk, op, y, "output")
    wq = w_t.quantization
    if wq is None or wq.details_type or wq.scale.size not in (1, outputs) or \
            (wq.per_channel and wq.quantized_dimension != 0):
        raise walk.fail(op, f"weights {w_t.describe()} need per-tensor or per-output-channel affine quantization")
    if np.any(wq.zero_points() != 0):
        raise walk.fail(op, "dense weights must be symmetric (zero point 0)")
    bias = np.zeros(outputs, dtype=np.int64)
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        bt = t(op.inputs[2])
        _require_type(walk, op, bt, (TT.INT32,), "bias")
        if bt.data is None or bt.data.shape != (outputs,):
            raise walk.fail(op, f"bias {bt.describe()} must be a constant vector of {outputs}")
        bias = bt.data.astype(np.int64)
    # TFLM: double(s_in) * double(s_w[n]) / double(s_out), one per channel (or one for all).
    scales = np.broadcast_to(wq.scale, (outputs,))
    requant = [Requant.from_real(effective_scale(input_q.scale, float(s), divisor=output_q.scale)) for s in scales]
    folded = bias - input_q.zero_point * weights.sum(axis=1)
    name = _safe_name(y.name, f"dense{index}")
    for n in range(outputs):
        check_accumulator_bounds(folded[n:n + 1], weights[n:n + 1], requant[n], f"{walk.where}: dense layer '{name}'")
    fused = op.options.get("fused_activation_function", ACT.NONE)
    if fused == ACT.NONE:
        activation, act_min = Activation.NONE, -128
    elif fused == ACT.RELU:  # TFLM: max(qmin, zp + round(0 / scale))
        activation, act_min = Activation.RELU, max(-128, output_q.zero_point)
    else:
        name_ = ACT(fused).name if fused in ACT._value2member_map_ else str(fused)
        raise walk.fail(op, f"fused activation {name_} is not supported (NONE or RELU)")
    return QDenseLayer(name=name, weights=weights, bias=folded, requant=tuple(requant), input_q=input_q,
                       output_q=output_q, activation=activation, activation_min=act_min, activation_max=127)


def _quantized_model(walk: _Walk, chain: _Chain, name: str, source: str) -> QuantizedModel:
    layers = []
    for k, op in enumerate(chain.lstm_ops):
        _check_lstm_variant(walk, op)
        if _lstm_kind(walk, op) != "int8":
            raise walk.fail(op, "a float LSTM in a quantized model is not supported")
        # Each layer reads its int8 input with the parameters of the tensor it is given (TFLM's
        # shape ops copy raw int8 values, so the tensor's declared parameters are what counts).
        layers.append(_q_lstm(walk, op, _per_tensor(walk, op, walk.t(op.inputs[0]), "input"), k))
    head = []
    for k, dense in enumerate(chain.dense):
        if dense.activation_op is not None:
            raise walk.fail(dense.activation_op, _HINTS.get(dense.activation_op.opcode, "not supported"))
        head.append(_q_dense(walk, dense, k))
    return QuantizedModel(name=name, recurrent_layers=tuple(layers), head=tuple(head),
                          sequence_output=chain.sequence_output, final_softmax=chain.final_softmax, source=source)


# ------------------------------------------------------------------------------- float models

def _float_matrix(walk: _Walk, op: Operator, index: int, what: str) -> np.ndarray:
    t = walk.t(index)
    _require_type(walk, op, t, (TT.FLOAT32,), what)
    if t.data is None:
        raise walk.fail(op, f"{what} {t.describe()} must be constant")
    return np.asarray(t.data, dtype=np.float32)


def _float_model(walk: _Walk, chain: _Chain, source: str, stem: str) -> FloatModel:
    layers, notes = [], list(chain.notes)
    for k, op in enumerate(chain.lstm_ops):
        _check_lstm_variant(walk, op)
        if _lstm_kind(walk, op) != "float":
            raise walk.fail(op, "an int8 LSTM in a float model is not supported")
        w_x = np.stack([_float_matrix(walk, op, op.inputs[i], "input weights") for i in S.LSTM_INPUT_WEIGHTS])
        w_h = np.stack([_float_matrix(walk, op, op.inputs[i], "recurrent weights") for i in S.LSTM_RECURRENT_WEIGHTS])
        hidden = w_x.shape[1]
        bias = np.stack([_float_matrix(walk, op, op.inputs[i], "gate bias") if op.inputs[i] >= 0
                         else np.zeros(hidden, np.float32) for i in S.LSTM_GATE_BIASES])
        for i in (S.LSTM_OUTPUT_STATE, S.LSTM_CELL_STATE):
            state = walk.t(op.inputs[i])
            if state.data is not None and np.any(state.data != 0):
                raise walk.fail(op, "non-zero initial LSTM states are not supported")
        name = _safe_name(walk.t(op.outputs[0]).name, f"lstm{k}")
        clip = float(op.options.get("cell_clip", 0.0))
        if clip > 0:
            notes.append(f"layer '{name}': the .tflite cell clip {clip:g} is not applied by the float reference; "
                         "the quantized cell state range comes from calibration")
        try:
            layers.append(LstmLayer(w_x=w_x, w_h=w_h, bias=bias, name=name))
        except ModelFormatError as exc:
            raise walk.fail(op, str(exc))
    head = []
    for k, dense in enumerate(chain.dense):
        op = dense.op
        w = _float_matrix(walk, op, op.inputs[1], "weights")
        b = _float_matrix(walk, op, op.inputs[2], "bias") if len(op.inputs) > 2 and op.inputs[2] >= 0 else \
            np.zeros(w.shape[0] if w.ndim == 2 else 0, np.float32)
        fused = op.options.get("fused_activation_function", ACT.NONE)
        activation = {ACT.NONE: Activation.NONE, ACT.RELU: Activation.RELU}.get(fused)
        if activation is None:
            raise walk.fail(op, f"fused activation {fused} is not supported (NONE or RELU)")
        if dense.activation_op is not None:
            activation = {OP.TANH: Activation.TANH, OP.LOGISTIC: Activation.SIGMOID,
                          OP.RELU: Activation.RELU}[dense.activation_op.opcode]
        try:
            head.append(DenseLayer(w=w, b=b, activation=activation, name=_safe_name(walk.t(op.outputs[0]).name,
                                                                                     f"dense{k}")))
        except ModelFormatError as exc:
            raise walk.fail(op, str(exc))
    if chain.time_major:
        notes.append("the .tflite input is time-major [T, 1, F]; lstm-edge data files are batch-first [N, T, F]")
    try:
        return FloatModel(recurrent_layers=tuple(layers), head=tuple(head), sequence_output=chain.sequence_output,
                          final_softmax=chain.final_softmax, name=stem, source=source, notes=tuple(notes))
    except ModelFormatError as exc:
        raise ModelFormatError(f"{walk.where}: {exc}")


def _dequantized_model(walk: _Walk, chain: _Chain, source: str, stem: str) -> FloatModel:
    """The float view of a full-integer model (weights and biases dequantized), for `inspect` and
    for users who want lstm-edge to requantize it with their own calibration data."""
    q = _quantized_model(walk, chain, stem, source)
    layers = []
    for layer, op in zip(q.recurrent_layers, chain.lstm_ops):
        sx = np.array([float(walk.t(op.inputs[i]).quantization.scale[0]) for i in S.LSTM_INPUT_WEIGHTS])
        sh = np.array([float(walk.t(op.inputs[i]).quantization.scale[0]) for i in S.LSTM_RECURRENT_WEIGHTS])
        raw_bias = np.stack([walk.t(op.inputs[i]).data.astype(np.float64) if op.inputs[i] >= 0
                             else np.zeros(layer.hidden_size) for i in S.LSTM_GATE_BIASES])
        bias = raw_bias * (layer.input_q.scale * sx)[:, None]
        layers.append(LstmLayer(w_x=layer.input_weights * sx[:, None, None],
                                w_h=layer.recurrent_weights * sh[:, None, None], bias=bias, name=layer.name))
    head = []
    for dense, d in zip(q.head, chain.dense):
        wq = walk.t(d.op.inputs[1]).quantization
        scales = np.broadcast_to(wq.scale.astype(np.float64), (dense.output_size,))
        unfolded = dense.bias + dense.input_q.zero_point * dense.weights.astype(np.int64).sum(axis=1)
        head.append(DenseLayer(w=dense.weights * scales[:, None], b=unfolded * scales * dense.input_q.scale,
                               activation=dense.activation, name=dense.name))
    notes = list(chain.notes) + ["a full-integer (int8) model: `compile` uses its own quantization (no --calib), "
                                 "bit-exact with TFLite Micro; these float weights are its dequantized values"]
    return FloatModel(recurrent_layers=tuple(layers), head=tuple(head), sequence_output=chain.sequence_output,
                      final_softmax=chain.final_softmax, name=stem, source=source, notes=tuple(notes))


# ------------------------------------------------------------------------------- entry points

@dataclass(frozen=True)
class TfliteImport:
    """A walked .tflite model: whether it is full-integer, and its graph input and output."""

    walk: _Walk
    chain: _Chain
    quantized: bool
    path: Path

    @property
    def input_tensor(self) -> Tensor:
        return self.chain.graph_input

    @property
    def steps(self) -> int:
        """The sequence length T the .tflite model was converted for."""
        shape = self.input_tensor.shape
        return int(shape[0] if self.chain.time_major else shape[1]) if len(shape) == 3 else 1

    @property
    def output_tensor(self) -> Tensor:
        """The tensor the compiled model reproduces (before a dropped softmax and DEQUANTIZE)."""
        return self.chain.output_tensor


def inspect_tflite(path, output: Optional[str] = None) -> TfliteImport:
    path = Path(path)
    model = read_tflite(path)
    walk = _Walk(model, output, f"'{path.name}'")
    chain = walk.run()
    first = chain.lstm_ops[0]
    _check_lstm_variant(walk, first)
    quantized = _lstm_kind(walk, first) == "int8"
    return TfliteImport(walk=walk, chain=chain, quantized=quantized, path=path)


def is_quantized_tflite(path, output: Optional[str] = None) -> bool:
    """True for a full-integer model (int8x8_16 LSTMs), which compiles without calibration."""
    return inspect_tflite(path, output).quantized


def load_tflite_quantized(path, name: str, output: Optional[str] = None) -> QuantizedModel:
    """A full-integer .tflite as a QuantizedModel with the model's own quantization."""
    imp = inspect_tflite(path, output)
    if not imp.quantized:
        raise UnsupportedModelError(f"'{imp.path.name}' is a float model: compile it with calibration data (--calib)")
    return _quantized_model(imp.walk, imp.chain, name, str(imp.path))


def load_tflite(path, output: Optional[str] = None) -> FloatModel:
    """The float IR of a .tflite model: the model itself for a float model, the dequantized
    weights for a full-integer one."""
    imp = inspect_tflite(path, output)
    if imp.quantized:
        return _dequantized_model(imp.walk, imp.chain, str(imp.path), imp.path.stem)
    return _float_model(imp.walk, imp.chain, str(imp.path), imp.path.stem)


__all__ = ["load_tflite", "load_tflite_quantized", "is_quantized_tflite", "inspect_tflite", "TfliteImport"]
