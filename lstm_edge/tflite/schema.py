"""The part of TensorFlow Lite's flatbuffer schema that lstm-edge reads and writes.

A `.tflite` file is a flatbuffer whose root table is a Model. Every table stores its fields
through a vtable: field number `slot` (its position in the schema, counting from 0) lives at
vtable offset `4 + 2 * slot`. This module lists, as plain constants, the slot numbers of the
tables we use, the enum values we need (operator codes, tensor types, option-union members,
fused activations) and the defaults a reader must assume when a field is absent (flatbuffers
does not store fields equal to their default).

The numbers are facts of the public TFLite schema (schema.fbs, version 3); nothing else is
taken from it. Used by the exporter (writer.py) and meant for the importer too: reading a
field is `table.Offset(vtable_offset(slot))` on a `flatbuffers.table.Table`, see the helpers
at the end.
"""

from __future__ import annotations

import enum
from typing import Optional

import flatbuffers
import numpy as np
from flatbuffers.table import Table

FILE_IDENTIFIER = b"TFL3"  # bytes 4..8 of every .tflite file
SCHEMA_VERSION = 3         # Model.version

# Operator codes above this value do not fit the int8 `deprecated_builtin_code` field, which
# then holds this placeholder; the real code is in `builtin_code` (an int32 since schema 3a).
PLACEHOLDER_FOR_GREATER_OP_CODES = 127


class BuiltinOperator(enum.IntEnum):
    """OperatorCode.builtin_code values of the operators lstm-edge meets in LSTM models."""

    ADD = 0
    CONCATENATION = 2
    DEQUANTIZE = 6
    FULLY_CONNECTED = 9
    LOGISTIC = 14
    LSTM = 16
    MUL = 18
    RELU = 19
    RESHAPE = 22
    SOFTMAX = 25
    TANH = 28
    GATHER = 36
    TRANSPOSE = 39
    SQUEEZE = 43
    UNIDIRECTIONAL_SEQUENCE_LSTM = 44
    STRIDED_SLICE = 45
    SPLIT = 49
    LOG_SOFTMAX = 50
    BIDIRECTIONAL_SEQUENCE_LSTM = 52
    SLICE = 65
    EXPAND_DIMS = 70
    SHAPE = 77
    PACK = 83
    UNPACK = 88
    REVERSE_V2 = 105
    QUANTIZE = 114
    WHILE = 119
    CALL_ONCE = 129
    VAR_HANDLE = 142
    READ_VARIABLE = 143
    ASSIGN_VARIABLE = 144


class TensorType(enum.IntEnum):
    """Tensor.type values."""

    FLOAT32 = 0
    FLOAT16 = 1
    INT32 = 2
    UINT8 = 3
    INT64 = 4
    STRING = 5
    BOOL = 6
    INT16 = 7
    COMPLEX64 = 8
    INT8 = 9
    FLOAT64 = 10
    COMPLEX128 = 11
    UINT64 = 12
    RESOURCE = 13
    VARIANT = 14
    UINT32 = 15
    UINT16 = 16
    INT4 = 17


# numpy element type of each tensor type whose buffers we read or write (little-endian, as
# flatbuffers stores them).
NUMPY_DTYPES = {
    TensorType.FLOAT32: np.dtype("<f4"),
    TensorType.INT32: np.dtype("<i4"),
    TensorType.UINT8: np.dtype("u1"),
    TensorType.INT64: np.dtype("<i8"),
    TensorType.BOOL: np.dtype("?"),
    TensorType.INT16: np.dtype("<i2"),
    TensorType.INT8: np.dtype("i1"),
    TensorType.FLOAT64: np.dtype("<f8"),
}


class BuiltinOptions(enum.IntEnum):
    """Operator.builtin_options_type: the member of the BuiltinOptions union (0 = none)."""

    NONE = 0
    FullyConnectedOptions = 8
    SoftmaxOptions = 9
    ConcatenationOptions = 10
    LSTMOptions = 14
    ReshapeOptions = 17
    GatherOptions = 23
    TransposeOptions = 26
    SqueezeOptions = 30
    StridedSliceOptions = 32
    LogSoftmaxOptions = 36
    DequantizeOptions = 38
    SliceOptions = 48
    ExpandDimsOptions = 52
    PackOptions = 59
    UnpackOptions = 64
    BidirectionalSequenceLSTMOptions = 69
    UnidirectionalSequenceLSTMOptions = 71
    ReverseV2Options = 81
    QuantizeOptions = 89


class ActivationFunctionType(enum.IntEnum):
    """fused_activation_function of FULLY_CONNECTED, the LSTMs (their cell gate), ..."""

    NONE = 0
    RELU = 1
    RELU_N1_TO_1 = 2
    RELU6 = 3
    TANH = 4
    SIGN_BIT = 5


class QuantizationDetails(enum.IntEnum):
    """QuantizationParameters.details_type (anything but NONE is a non-affine scheme)."""

    NONE = 0
    CustomQuantization = 1


# ------------------------------------------------------------------------------- table slots
# One class per table: FIELDS is the table's field count in the schema (the size of the vtable
# a writer starts the object with), the other names are slot numbers.

class Model:
    FIELDS = 10
    VERSION = 0           # uint32
    OPERATOR_CODES = 1    # [OperatorCode]
    SUBGRAPHS = 2         # [SubGraph]
    DESCRIPTION = 3       # string
    BUFFERS = 4           # [Buffer]; buffer 0 is the empty sentinel
    METADATA_BUFFER = 5   # [int32]
    METADATA = 6          # [Metadata]
    SIGNATURE_DEFS = 7    # [SignatureDef]


class SubGraph:
    FIELDS = 6
    TENSORS = 0    # [Tensor]
    INPUTS = 1     # [int32] tensor indices
    OUTPUTS = 2    # [int32] tensor indices
    OPERATORS = 3  # [Operator], in execution order
    NAME = 4       # string


class Tensor:
    FIELDS = 11
    SHAPE = 0           # [int32]
    TYPE = 1            # TensorType (int8), default FLOAT32
    BUFFER = 2          # uint32 index into Model.buffers; 0 = no data
    NAME = 3            # string
    QUANTIZATION = 4    # QuantizationParameters
    IS_VARIABLE = 5     # bool, default false (state tensors of the LSTMs are variables)
    SPARSITY = 6
    SHAPE_SIGNATURE = 7  # [int32], -1 for a dynamic dimension
    HAS_RANK = 8
    EXTERNAL_BUFFER = 10  # uint32, 0 = none: data kept outside the flatbuffer


class Buffer:
    FIELDS = 3
    DATA = 0    # [ubyte]
    OFFSET = 1  # uint64: data stored after the flatbuffer (files over 2 GB); 0 = inline
    SIZE = 2    # uint64


class Operator:
    FIELDS = 14
    OPCODE_INDEX = 0              # uint32 index into Model.operator_codes
    INPUTS = 1                    # [int32] tensor indices, -1 = optional input absent
    OUTPUTS = 2                   # [int32]
    BUILTIN_OPTIONS_TYPE = 3      # BuiltinOptions (uint8)
    BUILTIN_OPTIONS = 4           # the union's table
    CUSTOM_OPTIONS = 5
    CUSTOM_OPTIONS_FORMAT = 6
    MUTATING_VARIABLE_INPUTS = 7
    INTERMEDIATES = 8             # [int32] tensor indices (the quantized LSTMs' 5 intermediates)


class OperatorCode:
    FIELDS = 4
    DEPRECATED_BUILTIN_CODE = 0  # int8, default 0; PLACEHOLDER_FOR_GREATER_OP_CODES above 127
    CUSTOM_CODE = 1              # string
    VERSION = 2                  # int32, default 1
    BUILTIN_CODE = 3             # int32 (BuiltinOperator), default 0; readers use
                                 # max(builtin_code, deprecated_builtin_code)


class QuantizationParameters:
    FIELDS = 7
    MIN = 0                  # [float]
    MAX = 1                  # [float]
    SCALE = 2                # [float]: one per tensor, or one per channel
    ZERO_POINT = 3           # [int64]
    DETAILS_TYPE = 4         # QuantizationDetails
    DETAILS = 5
    QUANTIZED_DIMENSION = 6  # int32, default 0: the channel axis of per-channel scales


class UnidirectionalSequenceLSTMOptions:
    FIELDS = 6
    FUSED_ACTIVATION_FUNCTION = 0  # the cell gate's and cell output's activation: TANH
    CELL_CLIP = 1                  # float, default 0 = no clip
    PROJ_CLIP = 2                  # float, default 0
    TIME_MAJOR = 3                 # bool, default false: input [batch, time, features]
    ASYMMETRIC_QUANTIZE_INPUTS = 4  # bool (hybrid models only)
    DIAGONAL_RECURRENT_TENSORS = 5  # bool


class FullyConnectedOptions:
    FIELDS = 6
    FUSED_ACTIVATION_FUNCTION = 0  # ActivationFunctionType
    WEIGHTS_FORMAT = 1             # 0 = DEFAULT
    KEEP_NUM_DIMS = 2              # bool: keep [.., K] -> [.., N] instead of flattening to 2-D
    ASYMMETRIC_QUANTIZE_INPUTS = 3
    QUANTIZED_BIAS_TYPE = 4


class StridedSliceOptions:
    FIELDS = 6
    BEGIN_MASK = 0        # int32 bit masks, one bit per axis
    END_MASK = 1
    ELLIPSIS_MASK = 2
    NEW_AXIS_MASK = 3
    SHRINK_AXIS_MASK = 4
    OFFSET = 5            # bool: end is relative to begin


class ReshapeOptions:
    FIELDS = 1
    NEW_SHAPE = 0  # [int32]; the shape input tensor, when present, takes precedence


class GatherOptions:
    FIELDS = 2
    AXIS = 0        # int32
    BATCH_DIMS = 1  # int32


class SoftmaxOptions:
    FIELDS = 1
    BETA = 0  # float


class SqueezeOptions:
    FIELDS = 1
    SQUEEZE_DIMS = 0  # [int32]


class ConcatenationOptions:
    FIELDS = 2
    AXIS = 0
    FUSED_ACTIVATION_FUNCTION = 1


# Inputs of UNIDIRECTIONAL_SEQUENCE_LSTM (24 of them; absent optional ones are -1). Gates are
# input (i), forget (f), cell (g), output (o), in that order in each group.
LSTM_INPUT = 0
LSTM_INPUT_WEIGHTS = (1, 2, 3, 4)        # input-to-{i, f, g, o} [H, I]
LSTM_RECURRENT_WEIGHTS = (5, 6, 7, 8)    # recurrent-to-{i, f, g, o} [H, H]
LSTM_PEEPHOLE_WEIGHTS = (9, 10, 11)      # cell-to-{i, f, o}: must be absent for us
LSTM_GATE_BIASES = (12, 13, 14, 15)      # {i, f, g, o} bias [H]
LSTM_PROJECTION_WEIGHTS = 16
LSTM_PROJECTION_BIAS = 17
LSTM_OUTPUT_STATE = 18                   # variable [batch, H]: h
LSTM_CELL_STATE = 19                     # variable [batch, H]: c
LSTM_LAYER_NORM_WEIGHTS = (20, 21, 22, 23)
LSTM_INPUT_COUNT = 24
LSTM_INTERMEDIATE_COUNT = 5  # int8x8_16: the gate matmul outputs (4), then the hidden state
LSTM_HIDDEN_INTERMEDIATE = 4

ABSENT_TENSOR = -1  # an optional operator input that is not given


# ------------------------------------------------------------------------------- reading

def vtable_offset(slot: int) -> int:
    """Where field `slot` is recorded in a table's vtable (what Table.Offset takes)."""
    return 4 + 2 * slot


def has_identifier(buf: bytes) -> bool:
    """True when buf carries the TFLite file identifier (bytes 4..8)."""
    return len(buf) >= 8 and bytes(buf[4:8]) == FILE_IDENTIFIER


def root_table(buf: bytes) -> Table:
    """The Model table of a .tflite buffer."""
    return Table(buf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0))


def read_scalar(table: Table, slot: int, flags, default):
    """A scalar field (flags: a flatbuffers.number_types *Flags class), or its default."""
    o = table.Offset(vtable_offset(slot))
    return table.Get(flags, table.Pos + o) if o else default


def read_table(table: Table, slot: int) -> Optional[Table]:
    """A sub-table field (for a union member too), or None when absent."""
    o = table.Offset(vtable_offset(slot))
    if not o:
        return None
    return Table(table.Bytes, table.Indirect(table.Pos + o))


def read_string(table: Table, slot: int) -> Optional[str]:
    o = table.Offset(vtable_offset(slot))
    return table.String(table.Pos + o).decode("utf-8", errors="replace") if o else None


def read_vector(table: Table, slot: int, dtype) -> np.ndarray:
    """A vector of scalars as a numpy array (empty when absent)."""
    o = table.Offset(vtable_offset(slot))
    dtype = np.dtype(dtype)
    if not o:
        return np.zeros(0, dtype=dtype)
    start = table.Vector(o)
    return np.frombuffer(table.Bytes, dtype=dtype, count=table.VectorLen(o), offset=start).copy()


def read_tables(table: Table, slot: int):
    """A vector of tables, as a list of Table."""
    o = table.Offset(vtable_offset(slot))
    if not o:
        return []
    start = table.Vector(o)
    return [Table(table.Bytes, table.Indirect(start + 4 * k)) for k in range(table.VectorLen(o))]
