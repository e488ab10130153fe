"""Read a `.tflite` flatbuffer into plain, immutable Python objects.

Only what lstm-edge imports is decoded: the subgraphs with their tensors (shape, type, constant
data, quantization), operators (code, inputs, outputs, intermediates and the builtin options of
the operators we understand) and the model's description. Reading uses the `flatbuffers`
package directly through the slot numbers in `schema.py`, so no generated schema code is needed.

Any structural problem (truncated file, offsets out of range, wrong file identifier) becomes a
ModelFormatError naming the file. What the importer supports is decided in
`lstm_edge.importers.tflite_importer`, not here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np
from flatbuffers import number_types as N
from flatbuffers.table import Table

from ..errors import ModelFormatError
from . import schema as S

# Slots schema.py does not list (yet). Values are from the public TFLite schema (version 3).
TENSOR_EXTERNAL_BUFFER_SLOT = 10   # Tensor.external_buffer (uint32, 0 = none)

# Names of the operators the importer mentions in its messages, beyond schema.BuiltinOperator.
_EXTRA_OPERATOR_NAMES = {
    3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 17: "MAX_POOL_2D", 21: "RELU6", 24: "RNN", 32: "CUSTOM", 34: "PAD",
    35: "UNIDIRECTIONAL_SEQUENCE_RNN", 40: "MEAN", 41: "SUB", 42: "DIV", 46: "BIDIRECTIONAL_SEQUENCE_RNN",
    53: "CAST", 74: "SUM", 82: "REDUCE_MAX", 117: "HARD_SWISH",
}


def operator_name(code: int) -> str:
    """The schema name of a builtin operator code (or 'builtin operator N' when we do not know it)."""
    try:
        return S.BuiltinOperator(code).name
    except ValueError:
        return _EXTRA_OPERATOR_NAMES.get(code, f"builtin operator {code}")


def tensor_type_name(code: int) -> str:
    try:
        return S.TensorType(code).name
    except ValueError:
        return f"tensor type {code}"


@dataclass(frozen=True)
class Quantization:
    """Affine quantization: real = scale * (q - zero_point), per tensor or per channel."""

    scale: np.ndarray         # float32 [1] or [channels]
    zero_point: np.ndarray    # int64, same length (or empty: all 0)
    quantized_dimension: int
    details_type: int = 0     # non-zero: a non-affine (custom) scheme

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1

    def zero_points(self) -> np.ndarray:
        """Zero points with one entry per scale (the schema allows an empty list for all 0)."""
        if self.zero_point.size == 0:
            return np.zeros(self.scale.size, dtype=np.int64)
        return self.zero_point


@dataclass(frozen=True)
class Tensor:
    index: int
    name: str
    type: int                            # schema.TensorType
    shape: Tuple[int, ...]
    shape_signature: Optional[Tuple[int, ...]]  # -1 marks a dynamic dimension; None when absent
    data: Optional[np.ndarray]           # constant contents (reshaped), None for activations
    quantization: Optional[Quantization]  # None when the tensor has no scale
    is_variable: bool
    has_external_buffer: bool = False

    @property
    def type_name(self) -> str:
        return tensor_type_name(self.type)

    def describe(self) -> str:
        return f"tensor {self.index} '{self.name}' ({self.type_name} {list(self.shape)})"


@dataclass(frozen=True)
class Operator:
    index: int
    opcode: int                # builtin operator code (schema.BuiltinOperator value)
    custom_code: Optional[str]
    version: int
    inputs: Tuple[int, ...]    # tensor indices; -1 = optional input absent
    outputs: Tuple[int, ...]
    intermediates: Tuple[int, ...]
    options_type: int          # schema.BuiltinOptions member (0 = none)
    options: Dict[str, object] = field(default_factory=dict)

    @property
    def name(self) -> str:
        if self.custom_code is not None:
            return f"custom operator '{self.custom_code}'"
        return operator_name(self.opcode)

    def describe(self) -> str:
        return f"operator {self.index} ({self.name})"


@dataclass(frozen=True)
class Subgraph:
    name: str
    tensors: Tuple[Tensor, ...]
    inputs: Tuple[int, ...]
    outputs: Tuple[int, ...]
    operators: Tuple[Operator, ...]


@dataclass(frozen=True)
class Model:
    version: int
    description: str
    subgraphs: Tuple[Subgraph, ...]
    source: str = ""


# ------------------------------------------------------------------------------- options

# BuiltinOptions member -> {option name: (slot, flatbuffers flags, default)}; vectors use a
# numpy dtype in place of the flags and default to an empty tuple.
_BOOL = N.BoolFlags
_I8 = N.Int8Flags
_I32 = N.Int32Flags
_F32 = N.Float32Flags
_VECTOR = "vector"

_OPTION_FIELDS = {
    S.BuiltinOptions.UnidirectionalSequenceLSTMOptions: {
        "fused_activation_function": (0, _I8, 0), "cell_clip": (1, _F32, 0.0), "proj_clip": (2, _F32, 0.0),
        "time_major": (3, _BOOL, False), "asymmetric_quantize_inputs": (4, _BOOL, False),
        "diagonal_recurrent_tensors": (5, _BOOL, False)},
    S.BuiltinOptions.LSTMOptions: {
        "fused_activation_function": (0, _I8, 0), "cell_clip": (1, _F32, 0.0), "proj_clip": (2, _F32, 0.0),
        "kernel_type": (3, _I8, 0), "asymmetric_quantize_inputs": (4, _BOOL, False)},
    S.BuiltinOptions.FullyConnectedOptions: {
        "fused_activation_function": (0, _I8, 0), "weights_format": (1, _I8, 0), "keep_num_dims": (2, _BOOL, False),
        "asymmetric_quantize_inputs": (3, _BOOL, False), "quantized_bias_type": (4, _I8, 0)},
    S.BuiltinOptions.StridedSliceOptions: {
        "begin_mask": (0, _I32, 0), "end_mask": (1, _I32, 0), "ellipsis_mask": (2, _I32, 0),
        "new_axis_mask": (3, _I32, 0), "shrink_axis_mask": (4, _I32, 0), "offset": (5, _BOOL, False)},
    S.BuiltinOptions.GatherOptions: {"axis": (0, _I32, 0), "batch_dims": (1, _I32, 0)},
    S.BuiltinOptions.SoftmaxOptions: {"beta": (0, _F32, 0.0)},
    S.BuiltinOptions.ReshapeOptions: {"new_shape": (0, _VECTOR, "<i4")},
    S.BuiltinOptions.SqueezeOptions: {"squeeze_dims": (0, _VECTOR, "<i4")},
    S.BuiltinOptions.ConcatenationOptions: {"axis": (0, _I32, 0), "fused_activation_function": (1, _I8, 0)},
}


def _read_options(table: Optional[Table], options_type: int) -> Dict[str, object]:
    fields = _OPTION_FIELDS.get(options_type)
    if fields is None:
        return {}
    out: Dict[str, object] = {}
    for name, (slot, flags, default) in fields.items():
        if flags == _VECTOR:
            out[name] = tuple(int(v) for v in S.read_vector(table, slot, default)) if table is not None else ()
        else:
            value = S.read_scalar(table, slot, flags, default) if table is not None else default
            out[name] = float(value) if flags is _F32 else (bool(value) if flags is _BOOL else int(value))
    return out


# ------------------------------------------------------------------------------- reading

def _ints(table: Table, slot: int) -> Tuple[int, ...]:
    return tuple(int(v) for v in S.read_vector(table, slot, "<i4"))


def _buffer_data(buffers, index: int, file_bytes: bytes) -> Optional[bytes]:
    if index == 0 or index >= len(buffers):
        if index >= len(buffers) and index != 0:
            raise ModelFormatError(f"buffer index {index} out of range ({len(buffers)} buffers)")
        return None
    buf = buffers[index]
    data = S.read_vector(buf, S.Buffer.DATA, np.uint8)
    if data.size:
        return data.tobytes()
    offset = S.read_scalar(buf, S.Buffer.OFFSET, N.Uint64Flags, 0)
    size = S.read_scalar(buf, S.Buffer.SIZE, N.Uint64Flags, 0)
    if offset > 1 and size:  # stored after the flatbuffer (models over 2 GB); offset from the file start
        if offset + size > len(file_bytes):
            raise ModelFormatError(f"buffer {index} lies outside the file")
        return bytes(file_bytes[offset:offset + size])
    return None


def _read_quantization(table: Optional[Table]) -> Optional[Quantization]:
    if table is None:
        return None
    scale = S.read_vector(table, S.QuantizationParameters.SCALE, "<f4")
    if scale.size == 0:
        details = S.read_scalar(table, S.QuantizationParameters.DETAILS_TYPE, N.Uint8Flags, 0)
        if details:
            return Quantization(scale, np.zeros(0, np.int64), 0, int(details))
        return None
    return Quantization(
        scale=scale.astype(np.float32),
        zero_point=S.read_vector(table, S.QuantizationParameters.ZERO_POINT, "<i8").astype(np.int64),
        quantized_dimension=int(S.read_scalar(table, S.QuantizationParameters.QUANTIZED_DIMENSION, N.Int32Flags, 0)),
        details_type=int(S.read_scalar(table, S.QuantizationParameters.DETAILS_TYPE, N.Uint8Flags, 0)))


def _read_tensor(index: int, table: Table, buffers, file_bytes: bytes) -> Tensor:
    shape = _ints(table, S.Tensor.SHAPE)
    o = table.Offset(S.vtable_offset(S.Tensor.SHAPE_SIGNATURE))
    signature = _ints(table, S.Tensor.SHAPE_SIGNATURE) if o else None
    ttype = int(S.read_scalar(table, S.Tensor.TYPE, N.Int8Flags, S.TensorType.FLOAT32))
    name = S.read_string(table, S.Tensor.NAME) or f"t{index}"
    raw = _buffer_data(buffers, int(S.read_scalar(table, S.Tensor.BUFFER, N.Uint32Flags, 0)), file_bytes)
    data = None
    if raw is not None:
        dtype = S.NUMPY_DTYPES.get(S.TensorType(ttype)) if ttype in S.TensorType._value2member_map_ else None
        if dtype is None:
            data = np.frombuffer(raw, dtype=np.uint8)  # kept raw: the importer refuses the type anyway
        else:
            count = int(np.prod(shape)) if shape else 1
            if len(raw) != count * dtype.itemsize:
                raise ModelFormatError(f"tensor {index} '{name}': {len(raw)} bytes of data for shape "
                                       f"{list(shape)} of {tensor_type_name(ttype)}")
            data = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
            data.flags.writeable = False
    return Tensor(
        index=index, name=name, type=ttype, shape=shape, shape_signature=signature, data=data,
        quantization=_read_quantization(S.read_table(table, S.Tensor.QUANTIZATION)),
        is_variable=bool(S.read_scalar(table, S.Tensor.IS_VARIABLE, N.BoolFlags, False)),
        has_external_buffer=bool(S.read_scalar(table, TENSOR_EXTERNAL_BUFFER_SLOT, N.Uint32Flags, 0)))


def _read_operator(index: int, table: Table, codes) -> Operator:
    opcode_index = int(S.read_scalar(table, S.Operator.OPCODE_INDEX, N.Uint32Flags, 0))
    if opcode_index >= len(codes):
        raise ModelFormatError(f"operator {index}: opcode index {opcode_index} out of range")
    opcode, custom, version = codes[opcode_index]
    options_type = int(S.read_scalar(table, S.Operator.BUILTIN_OPTIONS_TYPE, N.Uint8Flags, 0))
    options_table = S.read_table(table, S.Operator.BUILTIN_OPTIONS) if options_type else None
    return Operator(index=index, opcode=opcode, custom_code=custom, version=version,
                    inputs=_ints(table, S.Operator.INPUTS), outputs=_ints(table, S.Operator.OUTPUTS),
                    intermediates=_ints(table, S.Operator.INTERMEDIATES), options_type=options_type,
                    options=_read_options(options_table, options_type))


def _read_opcode(table: Table):
    deprecated = int(S.read_scalar(table, S.OperatorCode.DEPRECATED_BUILTIN_CODE, N.Int8Flags, 0))
    builtin = int(S.read_scalar(table, S.OperatorCode.BUILTIN_CODE, N.Int32Flags, 0))
    custom = S.read_string(table, S.OperatorCode.CUSTOM_CODE)
    version = int(S.read_scalar(table, S.OperatorCode.VERSION, N.Int32Flags, 1))
    return max(deprecated, builtin), custom, version


def _read_subgraph(table: Table, codes, buffers, file_bytes: bytes, k: int) -> Subgraph:
    tensors = tuple(_read_tensor(i, t, buffers, file_bytes)
                    for i, t in enumerate(S.read_tables(table, S.SubGraph.TENSORS)))
    operators = tuple(_read_operator(i, t, codes) for i, t in enumerate(S.read_tables(table, S.SubGraph.OPERATORS)))
    inputs, outputs = _ints(table, S.SubGraph.INPUTS), _ints(table, S.SubGraph.OUTPUTS)
    count = len(tensors)
    for what, indices in (("input", inputs), ("output", outputs)):
        for i in indices:
            if not 0 <= i < count:
                raise ModelFormatError(f"subgraph {k}: graph {what} tensor index {i} out of range")
    for op in operators:
        for i in op.inputs + op.outputs + op.intermediates:
            if not -1 <= i < count:
                raise ModelFormatError(f"{op.describe()}: tensor index {i} out of range ({count} tensors)")
    return Subgraph(name=S.read_string(table, S.SubGraph.NAME) or f"subgraph{k}", tensors=tensors,
                    inputs=inputs, outputs=outputs, operators=operators)


def read_tflite(source: Union[str, Path, bytes, bytearray]) -> Model:
    """Parse a .tflite file (a path) or its bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, where = bytes(source), "TFLite model"
    else:
        path = Path(source)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelFormatError(f"cannot read '{path}': {exc.strerror or exc}")
        where = f"'{path}'"
    if not S.has_identifier(data):
        raise ModelFormatError(f"{where} is not a TFLite flatbuffer (no 'TFL3' identifier)")
    try:
        root = S.root_table(data)
        codes = [_read_opcode(t) for t in S.read_tables(root, S.Model.OPERATOR_CODES)]
        buffers = S.read_tables(root, S.Model.BUFFERS)
        subgraphs = tuple(_read_subgraph(t, codes, buffers, data, k)
                          for k, t in enumerate(S.read_tables(root, S.Model.SUBGRAPHS)))
        version = int(S.read_scalar(root, S.Model.VERSION, N.Uint32Flags, 0))
        description = S.read_string(root, S.Model.DESCRIPTION) or ""
    except ModelFormatError as exc:
        raise ModelFormatError(f"{where}: {exc}") from None
    except (struct.error, IndexError, ValueError, TypeError, OverflowError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{where} is a damaged TFLite flatbuffer ({type(exc).__name__}: {exc})") from None
    if not subgraphs:
        raise ModelFormatError(f"{where} has no subgraph")
    return Model(version=version, description=description, subgraphs=subgraphs,
                 source=str(source) if not isinstance(source, (bytes, bytearray, memoryview)) else "")


__all__ = ["Model", "Subgraph", "Tensor", "Operator", "Quantization", "read_tflite", "operator_name",
           "tensor_type_name"]
