"""TFLite exporter: QuantizedModel -> `.tflite` bytes that TensorFlow Lite Micro runs.

The file computes what the generated C computes, integer for integer, in TFLM's reference
kernels: int8 input [1, T, I] (batch 1, T fixed at export), one UNIDIRECTIONAL_SEQUENCE_LSTM
per layer (int8x8_16: int8 activations and per-gate weights, int32 biases, int16 cell state),
then for last-step models a STRIDED_SLICE of the last step, then the head as FULLY_CONNECTED
layers (per-channel int8 weights, fused ReLU) with TANH / LOGISTIC where the head has them.
The output is what the C returns (logits: a final softmax is not exported, as it is not
compiled). State lives in the LSTMs' variable tensors: TFLM's `reset()` starts a new sequence.

TFLM recomputes every fixed-point multiplier from the float32 scales in the file, and applies
zero points itself. So the file carries scales and plain biases, not our multipliers and folded
biases, and the exporter proves, tensor by tensor, that what TFLM will derive from the file is
exactly what the C contains (else it refuses with a QuantizationError).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import flatbuffers
import numpy as np

from .. import __version__
from ..errors import InputDataError, QuantizationError, UnsupportedModelError
from ..fixedpoint import INT32_MAX, INT32_MIN, effective_scale
from ..int8_activations import tflm_int8_table
from ..ir import Activation
from ..quantized_model import QDenseLayer, QLstmLayer, QuantizedModel, QuantParams, Requant
from ..quantizer import GATE_INPUT_SCALE, GATE_OUTPUT_SCALE
from . import schema as fb
from .schema import ActivationFunctionType, BuiltinOperator, BuiltinOptions, TensorType

BUFFER_ALIGNMENT = 16  # constant data aligned for any element type and for SIMD kernels
MAX_STEPS = 1 << 16

# An operator's options: the union member and a function writing its table into a Builder.
Options = Tuple[BuiltinOptions, Callable[[flatbuffers.Builder], int]]


@dataclass
class _Tensor:
    name: str
    shape: Tuple[int, ...]
    type: TensorType
    buffer: int
    scales: Optional[Tuple[float, ...]]
    zero_points: Optional[Tuple[int, ...]]
    quantized_dimension: int
    variable: bool


@dataclass
class _Operator:
    opcode: int
    inputs: Tuple[int, ...]
    outputs: Tuple[int, ...]
    options: Optional[Options]
    intermediates: Tuple[int, ...]


class GraphWriter:
    """One subgraph's tensors and operators, serialized as a TFLite Model by `finish`.

    Generic (knows nothing of LSTMs): the exporter below and the single-operator tests use it.
    """

    def __init__(self):
        self.tensors: List[_Tensor] = []
        self.buffers: List[bytes] = [b""]  # buffer 0: the empty sentinel every model starts with
        self.opcodes: Dict[int, int] = {}
        self.operators: List[_Operator] = []

    def tensor(self, name: str, shape: Sequence[int], ttype: TensorType, data: Optional[np.ndarray] = None,
               q: Optional[QuantParams] = None, scales: Optional[Sequence[float]] = None,
               zero_points: Optional[Sequence[int]] = None, quantized_dimension: int = 0,
               variable: bool = False) -> int:
        """Add a tensor; `data` makes it a constant. Quantization is `q` (per tensor) or
        `scales`/`zero_points` (per channel along `quantized_dimension`). Returns its index."""
        buffer = 0
        if data is not None:
            array = np.ascontiguousarray(data, dtype=fb.NUMPY_DTYPES[ttype])
            if array.shape != tuple(shape):
                raise ValueError(f"tensor {name}: data shape {array.shape} is not {tuple(shape)}")
            self.buffers.append(array.tobytes())
            buffer = len(self.buffers) - 1
        if q is not None:
            scales, zero_points = (q.scale,), (q.zero_point,)
        self.tensors.append(_Tensor(
            name, tuple(int(d) for d in shape), TensorType(ttype), buffer,
            None if scales is None else tuple(float(np.float32(s)) for s in scales),
            None if zero_points is None else tuple(int(z) for z in zero_points),
            quantized_dimension, variable))
        return len(self.tensors) - 1

    def operator(self, op: BuiltinOperator, inputs: Sequence[int], outputs: Sequence[int],
                 options: Optional[Options] = None, intermediates: Sequence[int] = ()) -> None:
        """Append an operator (executed in the order added)."""
        opcode = self.opcodes.setdefault(int(op), len(self.opcodes))
        self.operators.append(_Operator(opcode, tuple(inputs), tuple(outputs), options, tuple(intermediates)))

    def finish(self, inputs: Sequence[int], outputs: Sequence[int], description: str = "") -> bytes:
        b = flatbuffers.Builder(1024 + sum(len(d) for d in self.buffers))
        subgraph = self._subgraph(b, inputs, outputs)
        opcodes = [_operator_code(b, code) for code in self.opcodes]  # dict order = opcode index
        buffers = [_buffer(b, data) for data in self.buffers]
        desc = b.CreateString(description)
        subgraphs, opcodes_vec, buffers_vec = (_table_vector(b, v) for v in ([subgraph], opcodes, buffers))
        b.StartObject(fb.Model.FIELDS)
        b.PrependUint32Slot(fb.Model.VERSION, fb.SCHEMA_VERSION, 0)
        b.PrependUOffsetTRelativeSlot(fb.Model.OPERATOR_CODES, opcodes_vec, 0)
        b.PrependUOffsetTRelativeSlot(fb.Model.SUBGRAPHS, subgraphs, 0)
        b.PrependUOffsetTRelativeSlot(fb.Model.DESCRIPTION, desc, 0)
        b.PrependUOffsetTRelativeSlot(fb.Model.BUFFERS, buffers_vec, 0)
        b.Finish(b.EndObject(), file_identifier=fb.FILE_IDENTIFIER)
        return bytes(b.Output())

    def _subgraph(self, b, inputs, outputs) -> int:
        tensors = _table_vector(b, [_tensor(b, t) for t in self.tensors])
        operators = _table_vector(b, [_operator(b, op) for op in self.operators])
        inputs_vec, outputs_vec = _int32_vector(b, inputs), _int32_vector(b, outputs)
        name = b.CreateString("main")
        b.StartObject(fb.SubGraph.FIELDS)
        b.PrependUOffsetTRelativeSlot(fb.SubGraph.TENSORS, tensors, 0)
        b.PrependUOffsetTRelativeSlot(fb.SubGraph.INPUTS, inputs_vec, 0)
        b.PrependUOffsetTRelativeSlot(fb.SubGraph.OUTPUTS, outputs_vec, 0)
        b.PrependUOffsetTRelativeSlot(fb.SubGraph.OPERATORS, operators, 0)
        b.PrependUOffsetTRelativeSlot(fb.SubGraph.NAME, name, 0)
        return b.EndObject()


# ------------------------------------------------------------------------ flatbuffer pieces

def _int32_vector(b, values) -> int:
    return b.CreateNumpyVector(np.asarray(list(values), dtype="<i4"))


def _table_vector(b, offsets: Sequence[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _aligned_bytes(b, data: bytes) -> int:
    """A [ubyte] vector whose first byte is BUFFER_ALIGNMENT-aligned in the final file."""
    b.StartVector(1, len(data), BUFFER_ALIGNMENT)
    b.head = b.head - len(data)
    b.Bytes[b.head:b.head + len(data)] = data
    return b.EndVector()


def _buffer(b, data: bytes) -> int:
    vec = _aligned_bytes(b, data) if data else None
    b.StartObject(fb.Buffer.FIELDS)
    if vec is not None:
        b.PrependUOffsetTRelativeSlot(fb.Buffer.DATA, vec, 0)
    return b.EndObject()


def _operator_code(b, code: int) -> int:
    b.StartObject(fb.OperatorCode.FIELDS)
    b.PrependInt8Slot(fb.OperatorCode.DEPRECATED_BUILTIN_CODE, min(code, fb.PLACEHOLDER_FOR_GREATER_OP_CODES), 0)
    b.PrependInt32Slot(fb.OperatorCode.VERSION, 1, 1)
    b.PrependInt32Slot(fb.OperatorCode.BUILTIN_CODE, code, 0)
    return b.EndObject()


def _quantization(b, t: _Tensor) -> int:
    scale = b.CreateNumpyVector(np.asarray(t.scales, dtype="<f4"))
    zero_point = b.CreateNumpyVector(np.asarray(t.zero_points, dtype="<i8"))
    b.StartObject(fb.QuantizationParameters.FIELDS)
    b.PrependUOffsetTRelativeSlot(fb.QuantizationParameters.SCALE, scale, 0)
    b.PrependUOffsetTRelativeSlot(fb.QuantizationParameters.ZERO_POINT, zero_point, 0)
    b.PrependInt32Slot(fb.QuantizationParameters.QUANTIZED_DIMENSION, t.quantized_dimension, 0)
    return b.EndObject()


def _tensor(b, t: _Tensor) -> int:
    shape = _int32_vector(b, t.shape)
    name = b.CreateString(t.name)
    quant = _quantization(b, t) if t.scales is not None else None
    b.StartObject(fb.Tensor.FIELDS)
    b.PrependUOffsetTRelativeSlot(fb.Tensor.SHAPE, shape, 0)
    b.PrependInt8Slot(fb.Tensor.TYPE, int(t.type), int(TensorType.FLOAT32))
    b.PrependUint32Slot(fb.Tensor.BUFFER, t.buffer, 0)
    b.PrependUOffsetTRelativeSlot(fb.Tensor.NAME, name, 0)
    if quant is not None:
        b.PrependUOffsetTRelativeSlot(fb.Tensor.QUANTIZATION, quant, 0)
    b.PrependBoolSlot(fb.Tensor.IS_VARIABLE, t.variable, False)
    return b.EndObject()


def _operator(b, op: _Operator) -> int:
    inputs, outputs = _int32_vector(b, op.inputs), _int32_vector(b, op.outputs)
    intermediates = _int32_vector(b, op.intermediates) if op.intermediates else None
    options = op.options[1](b) if op.options else None
    b.StartObject(fb.Operator.FIELDS)
    b.PrependUint32Slot(fb.Operator.OPCODE_INDEX, op.opcode, 0)
    b.PrependUOffsetTRelativeSlot(fb.Operator.INPUTS, inputs, 0)
    b.PrependUOffsetTRelativeSlot(fb.Operator.OUTPUTS, outputs, 0)
    if options is not None:
        b.PrependUint8Slot(fb.Operator.BUILTIN_OPTIONS_TYPE, int(op.options[0]), 0)
        b.PrependUOffsetTRelativeSlot(fb.Operator.BUILTIN_OPTIONS, options, 0)
    if intermediates is not None:
        b.PrependUOffsetTRelativeSlot(fb.Operator.INTERMEDIATES, intermediates, 0)
    return b.EndObject()


# ------------------------------------------------------------------------ operator options

def lstm_options(cell_clip: float = 0.0, time_major: bool = False) -> Options:
    def build(b):
        s = fb.UnidirectionalSequenceLSTMOptions
        b.StartObject(s.FIELDS)
        # The cell gate and the cell output go through tanh; TFLM reads it from this field.
        b.PrependInt8Slot(s.FUSED_ACTIVATION_FUNCTION, int(ActivationFunctionType.TANH), 0)
        b.PrependFloat32Slot(s.CELL_CLIP, cell_clip, 0.0)
        b.PrependBoolSlot(s.TIME_MAJOR, time_major, False)
        return b.EndObject()
    return BuiltinOptions.UnidirectionalSequenceLSTMOptions, build


def fully_connected_options(activation: ActivationFunctionType = ActivationFunctionType.NONE,
                            keep_num_dims: bool = False) -> Options:
    def build(b):
        s = fb.FullyConnectedOptions
        b.StartObject(s.FIELDS)
        b.PrependInt8Slot(s.FUSED_ACTIVATION_FUNCTION, int(activation), 0)
        b.PrependBoolSlot(s.KEEP_NUM_DIMS, keep_num_dims, False)
        return b.EndObject()
    return BuiltinOptions.FullyConnectedOptions, build


def strided_slice_options(shrink_axis_mask: int = 0) -> Options:
    def build(b):
        s = fb.StridedSliceOptions
        b.StartObject(s.FIELDS)
        b.PrependInt32Slot(s.SHRINK_AXIS_MASK, shrink_axis_mask, 0)
        return b.EndObject()
    return BuiltinOptions.StridedSliceOptions, build


# ------------------------------------------------------------------------ exactness checks

def _f32(v: float) -> float:
    return float(np.float32(v))


def _requant_of(*factors: float, divisor: float) -> Requant:
    """What TFLM derives at prepare time from float32 scales: QuantizeMultiplier of the
    double product of the factors over the divisor (see fixedpoint.effective_scale)."""
    return Requant.from_real(effective_scale(*factors, divisor=divisor))


def _check_requant(ours: Requant, *factors: float, divisor: float, where: str) -> None:
    theirs = _requant_of(*factors, divisor=divisor)
    if theirs != ours:
        raise QuantizationError(f"{where}: TFLite would derive the multiplier {theirs} from the file's scales, "
                                f"the compiled model uses {ours}; recompile the model with this lstm-edge")


def recover_weight_scale(requant: Requant, other_scale: float, divisor: float, where: str) -> float:
    """The float32 weight scale s with QuantizeMultiplier(other_scale * s / divisor) == requant.

    The quantized model keeps multipliers, not weight scales. A multiplier has 31 significant
    bits and a float32 24, so dividing it back gives the weight scale to within rounding; the
    nearby float32 values are tried and the one reproducing the multiplier exactly is kept."""
    if requant.multiplier <= 0:
        raise QuantizationError(f"{where}: the multiplier underflowed to 0; TFLite cannot represent it")
    real = requant.multiplier * 2.0 ** (requant.shift - 31)
    guess = np.float32(real * _f32(divisor) / _f32(other_scale))
    candidates = [guess]
    up = down = guess
    for _ in range(4):
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(0))
        candidates += [up, down]
    for s in candidates:
        if s > 0 and _requant_of(other_scale, float(s), divisor=divisor) == requant:
            return float(s)
    raise QuantizationError(f"{where}: no float32 weight scale reproduces the multiplier {requant}")


def plain_bias(folded: np.ndarray, weights: np.ndarray, zero_point: int, where: str) -> np.ndarray:
    """Undo our zero-point folding: bias = folded + zp * rowsum(W), as TFLM subtracts zp itself
    (its sum_k W (x_k - zp) + bias is then our folded + sum_k W x_k, term for term)."""
    rowsum = weights.astype(np.int64).sum(axis=-1)
    bias = folded.astype(np.int64) + int(zero_point) * rowsum
    if bias.min(initial=0) < INT32_MIN or bias.max(initial=0) > INT32_MAX:
        raise QuantizationError(f"{where}: the bias without its folded zero-point term exceeds int32")
    stored = bias.astype(np.int32)
    # Exactness: folding the stored int32 bias again gives back every folded value.
    assert np.array_equal(stored.astype(np.int64) - int(zero_point) * rowsum, folded.astype(np.int64)), where
    return stored


# ------------------------------------------------------------------------ the model

def _lstm_weight_scales(layer: QLstmLayer) -> Tuple[List[float], List[float]]:
    where = f"layer '{layer.name}'"
    wx = [recover_weight_scale(r, layer.input_q.scale, GATE_INPUT_SCALE, f"{where} input gate {g}")
          for g, r in enumerate(layer.input_requant)]
    wh = [recover_weight_scale(r, layer.hidden_q.scale, GATE_INPUT_SCALE, f"{where} recurrent gate {g}")
          for g, r in enumerate(layer.recurrent_requant)]
    return wx, wh


def _check_lstm_cell(layer: QLstmLayer) -> None:
    """The cell and hidden multipliers TFLM derives from the file's cell and hidden scales."""
    where = f"layer '{layer.name}'"
    cell = 2.0 ** layer.cell_scale_power
    _check_requant(layer.forget_cell_requant, GATE_OUTPUT_SCALE, cell, divisor=cell, where=f"{where} forget * cell")
    _check_requant(layer.input_cell_requant, GATE_OUTPUT_SCALE, GATE_OUTPUT_SCALE, divisor=cell,
                   where=f"{where} input * candidate")
    _check_requant(layer.hidden_requant, GATE_OUTPUT_SCALE, GATE_OUTPUT_SCALE, divisor=layer.hidden_q.scale,
                   where=f"{where} output * tanh(cell)")
    rowsum = layer.recurrent_weights.astype(np.int64).sum(axis=-1)
    if not np.array_equal(layer.recurrent_bias.astype(np.int64), -layer.hidden_q.zero_point * rowsum):
        raise QuantizationError(f"{where}: the recurrent bias holds more than the hidden zero-point term; "
                                "TFLite's LSTM has no recurrent bias")


def _cell_clip(layer: QLstmLayer) -> float:
    """The float clip whose quantization (clip / 2^p, TFLM's CreateLstmCellStateInfo) is ours."""
    clip = float(np.float32(layer.cell_clip * 2.0 ** layer.cell_scale_power))
    if layer.cell_clip and int(min(clip / 2.0 ** layer.cell_scale_power, 32767.0)) != layer.cell_clip:
        raise QuantizationError(f"layer '{layer.name}': cell clip {layer.cell_clip} is not representable")
    return clip


def _add_lstm(g: GraphWriter, layer: QLstmLayer, x: int, steps: int, k: int) -> int:
    """One UNIDIRECTIONAL_SEQUENCE_LSTM; returns its output tensor [1, T, H]."""
    _check_lstm_cell(layer)
    wx_scales, wh_scales = _lstm_weight_scales(layer)
    hidden, inputs = layer.hidden_size, layer.input_size
    operands = [fb.ABSENT_TENSOR] * fb.LSTM_INPUT_COUNT
    operands[fb.LSTM_INPUT] = x
    for gate, name in enumerate("ifgo"):
        where = f"layer '{layer.name}' gate {name}"
        operands[fb.LSTM_INPUT_WEIGHTS[gate]] = g.tensor(
            f"lstm{k}/input_to_{name}", (hidden, inputs), TensorType.INT8, layer.input_weights[gate],
            q=QuantParams(wx_scales[gate], 0))
        operands[fb.LSTM_RECURRENT_WEIGHTS[gate]] = g.tensor(
            f"lstm{k}/recurrent_to_{name}", (hidden, hidden), TensorType.INT8, layer.recurrent_weights[gate],
            q=QuantParams(wh_scales[gate], 0))
        bias = plain_bias(layer.input_bias[gate], layer.input_weights[gate], layer.input_q.zero_point, where)
        operands[fb.LSTM_GATE_BIASES[gate]] = g.tensor(
            f"lstm{k}/{name}_bias", (hidden,), TensorType.INT32, bias,
            q=QuantParams(_f32(layer.input_q.scale) * wx_scales[gate], 0))
    # TFLM requantizes h with the hidden state tensor's scale and zero point (intermediate #4's are
    # not read: tested); all three places that describe h get the same values.
    operands[fb.LSTM_OUTPUT_STATE] = g.tensor(f"lstm{k}/hidden_state", (1, hidden), TensorType.INT8,
                                              q=layer.hidden_q, variable=True)
    operands[fb.LSTM_CELL_STATE] = g.tensor(f"lstm{k}/cell_state", (1, hidden), TensorType.INT16,
                                            q=QuantParams(2.0 ** layer.cell_scale_power, 0), variable=True)
    # The 5 intermediates carry quantization only: TFLM refuses them unless they hold 0 elements.
    intermediates = [g.tensor(f"lstm{k}/{name}_gate_matmul", (0,), TensorType.INT16,
                              q=QuantParams(GATE_INPUT_SCALE, 0)) for name in ("input", "forget", "cell", "output")]
    intermediates.append(g.tensor(f"lstm{k}/effective_hidden", (0,), TensorType.INT8, q=layer.hidden_q))
    out = g.tensor(f"lstm{k}/output", (1, steps, hidden), TensorType.INT8, q=layer.hidden_q)
    g.operator(BuiltinOperator.UNIDIRECTIONAL_SEQUENCE_LSTM, operands, [out], lstm_options(_cell_clip(layer)),
               intermediates=intermediates)
    return out


def _add_last_step(g: GraphWriter, seq: int, steps: int, hidden: int, q: QuantParams) -> int:
    """[1, T, H] -> [1, H]: the last step, by STRIDED_SLICE with the time axis shrunk."""
    begin = g.tensor("last_step/begin", (3,), TensorType.INT32, np.array([0, steps - 1, 0]))
    end = g.tensor("last_step/end", (3,), TensorType.INT32, np.array([1, steps, hidden]))
    strides = g.tensor("last_step/strides", (3,), TensorType.INT32, np.array([1, 1, 1]))
    out = g.tensor("last_step/output", (1, hidden), TensorType.INT8, q=q)
    g.operator(BuiltinOperator.STRIDED_SLICE, [seq, begin, end, strides], [out], strided_slice_options(0b010))
    return out


def _fused_activation(dense: QDenseLayer) -> ActivationFunctionType:
    """The fused activation whose TFLM clamp range is the one the C applies."""
    zp = dense.output_q.zero_point
    if dense.activation == Activation.RELU and (dense.activation_min, dense.activation_max) == (max(-128, zp), 127):
        return ActivationFunctionType.RELU
    if dense.activation != Activation.RELU and (dense.activation_min, dense.activation_max) == (-128, 127):
        return ActivationFunctionType.NONE
    raise QuantizationError(f"dense layer '{dense.name}': clamp [{dense.activation_min}, {dense.activation_max}] "
                            f"is not TFLite's for {dense.activation.value}")


def _table_operator(dense: QDenseLayer) -> BuiltinOperator:
    """TANH or LOGISTIC, after checking our table is TFLM's int8 kernel, entry for entry."""
    op = {Activation.TANH: BuiltinOperator.TANH, Activation.SIGMOID: BuiltinOperator.LOGISTIC}[dense.activation]
    expected, expected_q = tflm_int8_table(dense.activation, dense.output_q)
    if dense.table_q != expected_q or not np.array_equal(dense.table, expected):
        raise QuantizationError(f"dense layer '{dense.name}': its {dense.activation.value} table is not TFLite "
                                "Micro's int8 kernel; recompile the model with this lstm-edge")
    return op


def _add_dense(g: GraphWriter, dense: QDenseLayer, x: int, lead: Tuple[int, ...], k: int) -> int:
    """FULLY_CONNECTED (per-channel weights) and its table activation; returns the output tensor."""
    where = f"dense layer '{dense.name}'"
    w_scales = [recover_weight_scale(r, dense.input_q.scale, dense.output_q.scale, f"{where} channel {n}")
                for n, r in enumerate(dense.requant)]
    weights = g.tensor(f"dense{k}/weights", dense.weights.shape, TensorType.INT8, dense.weights,
                       scales=w_scales, zero_points=[0] * dense.output_size)
    bias = g.tensor(f"dense{k}/bias", (dense.output_size,), TensorType.INT32,
                    plain_bias(dense.bias, dense.weights, dense.input_q.zero_point, where),
                    scales=[_f32(dense.input_q.scale) * s for s in w_scales], zero_points=[0] * dense.output_size)
    shape = lead + (dense.output_size,)
    out = g.tensor(f"dense{k}/output", shape, TensorType.INT8, q=dense.output_q)
    g.operator(BuiltinOperator.FULLY_CONNECTED, [x, weights, bias], [out],
               fully_connected_options(_fused_activation(dense), keep_num_dims=len(lead) > 1))
    if dense.table is None:
        return out
    op = _table_operator(dense)
    activated = g.tensor(f"dense{k}/{dense.activation.value}", shape, TensorType.INT8, q=dense.table_q)
    g.operator(op, [out], [activated])
    return activated


def export_tflite(qmodel: QuantizedModel, steps: int) -> bytes:
    """The quantized model as a .tflite for TFLite Micro: int8 input [1, steps, I], output
    [1, steps, O] (sequence models) or [1, O] (last-step models), equal to the C's output."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= MAX_STEPS:
        raise InputDataError(f"steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
    steps = int(steps)
    for layer in qmodel.recurrent_layers:
        if not isinstance(layer, QLstmLayer):
            raise UnsupportedModelError(f"layer '{layer.name}' is not a forward LSTM layer: only stacks of "
                                        "forward LSTMs export to .tflite (GRU and bidirectional layers not yet)")
        if layer.gate_clip or layer.input_forget or layer.peephole_weights is not None:
            raise UnsupportedModelError(f"layer '{layer.name}' uses ONNX clip, input_forget or peepholes, which this "
                                        "exporter does not write: such a model does not export to .tflite")
        if layer.initial_hidden is not None or layer.initial_cell is not None:
            raise UnsupportedModelError(f"layer '{layer.name}' starts from a non-zero state: TFLite Micro's reset() "
                                        "zeroes it, so such a model does not export to .tflite")
    g = GraphWriter()
    x = g.tensor("input", (1, steps, qmodel.input_size), TensorType.INT8, q=qmodel.input_q)
    act = x
    for k, layer in enumerate(qmodel.recurrent_layers):
        act = _add_lstm(g, layer, act, steps, k)
    last = qmodel.recurrent_layers[-1]
    lead: Tuple[int, ...] = (1, steps)
    if not qmodel.sequence_output:
        act, lead = _add_last_step(g, act, steps, last.hidden_size, last.hidden_q), (1,)
    for k, dense in enumerate(qmodel.head):
        act = _add_dense(g, dense, act, lead, k)
    return g.finish([x], [act], description=f"lstm-edge {__version__}: {qmodel.name}")
