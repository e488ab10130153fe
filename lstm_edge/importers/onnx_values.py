"""What the importer knows about each value of the graph while it walks the nodes.

A value is one of:
  * a numpy array: a constant (initializers, Constant nodes, and anything computed only from
    constants, which is folded here: exporters that skip constant folding leave weights
    behind Transpose/Mul/Concat/... nodes);
  * ShapeVec: an int vector computed from tensor shapes (Shape -> Gather/Slice/Concat ...),
    kept symbolic because batch and time are only known at run time;
  * Fill: a tensor of one repeated value and a computed shape (ConstantOfShape, Expand):
    how exporters build zero initial states;
  * Data: a tensor computed from the model input (see onnx_data_ops);
  * StateStack: the final states of several layers concatenated (PyTorch's h_n);
  * Blocked: a value the importer cannot follow; using it is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ModelFormatError, UnsupportedModelError
from ..ir import DenseLayer
from .onnx_graph import axes_param, describe, first_line, int_list, node_attrs, slice_params

UNIT = "unit"  # label of a size-1 axis that carries no meaning (num_directions, kept last step)
# Label prefix of the batch and time axes flattened into one (Keras' Dense on a sequence:
# Reshape [N, T, F] -> [N*T, F], MatMul, Reshape back); ImportContext.merged keeps the parts.
MERGED = "merged:"
# Two large, different sizes stand in for a run-time size when interpreting Slice/Gather indices.
PROBE_SIZES = (1009, 1013)


@dataclass(frozen=True)
class Dim:
    """One entry of a computed shape: its size (None if only known at run time) and, when it was
    read from a tensor's shape, the label of the axis it measures."""

    size: Optional[int]
    label: Optional[str] = None


@dataclass(frozen=True)
class ShapeVec:
    dims: Tuple[Dim, ...]
    scalar: bool = False


@dataclass(frozen=True)
class Fill:
    dims: Tuple[Dim, ...]
    value: float


@dataclass(frozen=True)
class Blocked:
    message: str  # completes "<node> uses ..."


@dataclass(frozen=True)
class StateInput:
    """A graph input that only feeds the initial_h / initial_c slots of recurrent nodes (streaming
    exports: forward(x, h0, c0)), or a Squeeze/Slice/Gather/... of it. The IR layer starts from
    zeros; the caller's state lives in NAME_state_t."""

    name: str  # the graph input


@dataclass(frozen=True)
class LensInput:
    """A graph input that only feeds the sequence_lens slots of recurrent nodes (per-sequence
    lengths of a padded batch), or an Identity/Cast of it. The IR runs sequences of one length;
    the caller runs each sequence with NAME_run(..., steps=len)."""

    name: str  # the graph input


@dataclass(frozen=True)
class Axis:
    """An axis of a Data tensor. Labels: 'in0'..'in2' for the model input's axes (which is time,
    batch or feature is learnt from the first LSTM), 'feature:<value>' for features computed by a
    layer, 'direction:<value>' for the num_directions axis (size 2) of a bidirectional layer's
    outputs, UNIT for meaningless size-1 axes."""

    label: str
    size: Optional[int]


# Which time step each direction of the last recurrent layer was read at, when a last-step
# model takes one step: "last" (t = T-1) or "first" (t = 0); None while not taken.
LAST, FIRST = "last", "first"
DIRECTIONS = ("forward", "backward")


@dataclass(frozen=True)
class Data:
    """A tensor computed from the model input: its axes and the layers applied to it so far.

    steps: with a time step taken (last-step models), the step read for each direction of the
    last recurrent layer (one entry, or two for a bidirectional layer: forward, backward); None
    for whole sequences. part: "forward" or "backward" when only that direction of a
    bidirectional layer's output is kept (a Gather/Slice on its num_directions axis); the two
    parts are joined again by a Concat along the features."""

    axes: Tuple[Axis, ...]
    lstm: Tuple[object, ...] = ()  # LstmLayer, GruLayer, BidirectionalLayer
    head: Tuple[DenseLayer, ...] = ()
    steps: Optional[Tuple[Optional[str], ...]] = None
    part: Optional[str] = None
    softmax: Optional[str] = None
    # The sequence-lengths graph input of the layer whose Y this is: Y is padding past each length.
    padded: Optional[str] = None

    def with_axes(self, axes) -> "Data":
        return replace(self, axes=tuple(axes))

    @property
    def last_step(self) -> bool:
        return self.steps is not None and any(s is not None for s in self.steps)

    @property
    def dims(self) -> Tuple[Dim, ...]:
        return tuple(Dim(a.size, a.label) for a in self.axes)


@dataclass(frozen=True)
class StateStack:
    """Final states of several layers stacked along one axis: PyTorch's h_n of a multi-layer RNN,
    which exporters build as a Concat of the layers' Y_h. slots[k] is entry k of that axis (one
    per layer, two per bidirectional layer), with the axis removed; a Gather or Slice that keeps
    one entry turns it back into a Data value."""

    slots: Tuple[Data, ...]
    axis: int


class AxisRoles:
    """Which model-input axis is time, batch and feature, learnt when an LSTM reads them."""

    def __init__(self):
        self.bound: Dict[str, str] = {}

    def role(self, label: str) -> Optional[str]:
        if label == UNIT:
            return "unit"
        if label.startswith("feature"):
            return "feature"
        if label.startswith("direction"):
            return "direction"
        if label.startswith(MERGED):
            return "batch*time"
        return self.bound.get(label)


def const_values(value) -> Optional[List[int]]:
    """Ints of a constant, or of a ShapeVec whose sizes are all known; else None."""
    if isinstance(value, ShapeVec) and all(d.size is not None for d in value.dims):
        return [d.size for d in value.dims]
    return int_list(value)


def positions(start: int, end: int, step: int, size: Optional[int]) -> Tuple[str, ...]:
    """What a Slice keeps of an axis: 'all', 'last', 'first' or 'other', for every possible size
    when `size` is unknown (checked on two probe sizes)."""
    kinds = set()
    for n in ([size] if size is not None else PROBE_SIZES):
        kept = list(range(n))[slice(start, end, step)]
        if kept == list(range(n)):
            kinds.add("all")
        elif kept == [n - 1]:
            kinds.add("last")
        elif kept == [0]:
            kinds.add("first")
        else:
            kinds.add("other")
    return tuple(sorted(kinds))


def index_kind(index: int, size: Optional[int]) -> str:
    """'last', 'first', 'only' (the axis has one element) or 'other' for a Gather index on an
    axis of `size` (None: known at run time only, checked on two probe sizes)."""
    kinds = set()
    for n in ([size] if size is not None else PROBE_SIZES):
        if not -n <= index < n:
            return "other"
        p = index % n
        kinds.add("only" if n == 1 else "last" if p == n - 1 else "first" if p == 0 else "other")
    return kinds.pop() if len(kinds) == 1 else "other"


# --- constant folding ----------------------------------------------------------------------

NOT_FOLDABLE = {"LSTM", "GRU", "RNN", "If", "Loop", "Scan", "RandomNormal", "RandomNormalLike",
                "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial"}


def fold_constant_node(node: onnx.NodeProto, inputs: list, opset: int) -> list:
    """Evaluate a node whose inputs are all constants with onnx's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    if node.op_type in NOT_FOLDABLE:
        raise UnsupportedModelError(f"{describe(node)}: cannot be evaluated on constants; "
                                    f"its input must come from the model input")
    feeds = {f"in{k}": v for k, v in enumerate(inputs) if v is not None}
    single = onnx.NodeProto()
    single.CopyFrom(node)
    del single.input[:]
    single.input.extend([f"in{k}" if v is not None else "" for k, v in enumerate(inputs)])
    del single.output[:]
    single.output.extend([f"out{k}" if name else "" for k, name in enumerate(node.output)])
    graph = helper.make_graph(
        [single], "fold",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for n, v in feeds.items()],
        [helper.make_value_info(o, onnx.TypeProto()) for o in single.output if o])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        results = ReferenceEvaluator(model).run(None, feeds)
    except Exception as exc:  # the evaluator raises many types on bad attributes/shapes
        raise ModelFormatError(f"{describe(node)}: cannot evaluate it on its constant inputs: "
                               f"{first_line(exc)}") from None
    values = iter(np.asarray(r) for r in results)
    return [next(values) if name else None for name in node.output]


# --- shape vectors and fills ---------------------------------------------------------------

def as_shape_vec(value) -> Optional[ShapeVec]:
    if isinstance(value, ShapeVec):
        return value
    ints = int_list(value)
    if ints is None:
        return None
    return ShapeVec(tuple(Dim(v) for v in ints), scalar=np.ndim(value) == 0)


_ARITH = {"Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b,
          "Div": lambda a, b: a // b if b else None}


def _combine(op: str, a: Dim, b: Dim) -> Dim:
    size = None
    if a.size is not None and b.size is not None:
        size = _ARITH[op](a.size, b.size)
    # An axis' label survives only the operations that leave its size unchanged (x*1, x+0 ...).
    neutral = 1 if op in ("Mul", "Div") else 0
    if b.size == neutral:
        return Dim(size, a.label)
    if a.size == neutral and op in ("Mul", "Add"):
        return Dim(size, b.label)
    return Dim(size)


def _vec_op(node, inputs, opset) -> Optional[list]:
    """ShapeVec arithmetic and plumbing; None when `node` is not such an operation."""
    op, vecs = node.op_type, [as_shape_vec(v) if v is not None else None for v in inputs]
    first = vecs[0] if vecs else None
    if first is None or not isinstance(inputs[0], (ShapeVec, np.ndarray)):
        return None
    if op in ("Identity", "Cast"):
        return [first]
    if op in _ARITH and len(vecs) == 2 and vecs[1] is not None:
        a, b = first, vecs[1]
        if len(a.dims) != len(b.dims) and 1 not in (len(a.dims), len(b.dims)):
            return None
        n = max(len(a.dims), len(b.dims))
        pick = lambda v, k: v.dims[0] if len(v.dims) == 1 else v.dims[k]  # noqa: E731
        return [ShapeVec(tuple(_combine(op, pick(a, k), pick(b, k)) for k in range(n)),
                         a.scalar and b.scalar)]
    if op == "Concat" and all(v is not None for v in vecs):
        return [ShapeVec(tuple(d for v in vecs for d in v.dims))]
    if op == "Gather":
        index = int_list(inputs[1]) if len(inputs) > 1 else None
        if index is None:
            return None
        return [ShapeVec(tuple(first.dims[i] for i in index), scalar=np.ndim(inputs[1]) == 0)]
    if op == "Slice":
        params = slice_params(node, inputs, opset, 1)
        if len(params) != 1:
            return None
        _, start, end, step = params[0]
        return [ShapeVec(first.dims[slice(start, end, step)])]
    if op in ("Unsqueeze", "Squeeze", "Reshape"):
        scalar = op == "Squeeze" or (op == "Reshape" and const_values(inputs[1]) == [])
        if (scalar and len(first.dims) != 1) or (op == "Unsqueeze" and not first.scalar):
            return None  # only scalar <-> [1] changes keep a shape vector one-dimensional
        return [ShapeVec(first.dims, scalar=scalar)]
    return None


def shape_of(node, dims) -> ShapeVec:
    """Shape (with its opset-15 start/end attributes) of a tensor whose dims are known."""
    attrs = node_attrs(node)
    return ShapeVec(tuple(dims)[slice(attrs.get("start", 0), attrs.get("end"))])


def _slice_dims(node, dims, inputs, opset) -> Tuple[Dim, ...]:
    dims = list(dims)
    for axis, start, end, step in slice_params(node, inputs, opset, len(dims)):
        size = dims[axis].size
        if size is not None:
            kept = len(range(size)[slice(start, end, step)])
            dims[axis] = Dim(kept, dims[axis].label if kept == size else None)
        elif positions(start, end, step, None) != ("all",):
            counts = {len(range(n)[slice(start, end, step)]) for n in PROBE_SIZES}
            dims[axis] = Dim(counts.pop() if len(counts) == 1 else None)
    return tuple(dims)


def _fill_op(node, inputs, opset) -> Optional[list]:
    """Shape bookkeeping of Fill tensors through the ops exporters use around zero states."""
    op, fill = node.op_type, inputs[0]
    attrs = node_attrs(node)
    if op == "ConstantOfShape":
        vec = as_shape_vec(fill)
        value = attrs.get("value")
        value = float(numpy_helper.to_array(value).reshape(-1)[0]) if value is not None else 0.0
        return [Fill(vec.dims, value)] if vec is not None and not vec.scalar else None
    if op == "Expand":
        return _expand(fill, as_shape_vec(inputs[1]))
    if op == "Concat":
        return _concat_fills(inputs, attrs.get("axis"))
    if not isinstance(fill, Fill):
        return None
    dims = fill.dims
    if op in ("Identity", "Cast"):
        return [fill]
    if op == "Shape":
        return [shape_of(node, dims)]
    if op == "Slice":
        return [Fill(_slice_dims(node, dims, inputs, opset), fill.value)]
    if op == "Transpose":
        perm = attrs.get("perm", list(reversed(range(len(dims)))))
        return [Fill(tuple(dims[p] for p in perm), fill.value)]
    if op in ("Squeeze", "Unsqueeze"):
        axes = axes_param(node, inputs, opset)
        return [Fill(_squeeze_dims(op, dims, axes), fill.value)]
    if op == "Gather":
        index, axis = inputs[1], attrs.get("axis", 0) % max(len(dims), 1)
        keep = () if np.ndim(index) == 0 else (Dim(int(np.size(index))),)
        return [Fill(dims[:axis] + keep + dims[axis + 1:], fill.value)]
    if op == "Reshape":
        target = as_shape_vec(inputs[1])
        if target is None:
            return None
        new = [dims[k] if d.size == 0 and d.label is None and k < len(dims) else
               (Dim(None) if d.size == -1 and d.label is None else d) for k, d in enumerate(target.dims)]
        return [Fill(tuple(new), fill.value)]
    return None


def _concat_fills(inputs, axis) -> Optional[list]:
    """Fills of one value joined along `axis` (tf2onnx stacks a bidirectional layer's two zero
    initial states this way)."""
    if axis is None or not inputs or not all(isinstance(v, Fill) for v in inputs):
        return None
    first = inputs[0]
    rank = len(first.dims)
    if not rank or any(v.value != first.value or len(v.dims) != rank for v in inputs):
        return None
    axis %= rank
    sizes = [v.dims[axis].size for v in inputs]
    joined = Dim(sum(sizes) if None not in sizes else None)
    return [Fill(first.dims[:axis] + (joined,) + first.dims[axis + 1:], first.value)]


def _squeeze_dims(op, dims, axes) -> Tuple[Dim, ...]:
    dims = list(dims)
    if op == "Squeeze":
        drop = {a % len(dims) for a in axes} if axes else {k for k, d in enumerate(dims) if d.size == 1}
        return tuple(d for k, d in enumerate(dims) if k not in drop)
    rank = len(dims) + len(axes)
    for a in sorted(x % rank for x in axes):
        dims.insert(a, Dim(1, UNIT))
    return tuple(dims)


def _expand(source, shape: Optional[ShapeVec]) -> Optional[list]:
    if shape is None or shape.scalar:
        return None
    if isinstance(source, Fill):
        dims, value = source.dims, source.value
    elif isinstance(source, np.ndarray) and source.size and np.all(source == source.reshape(-1)[0]):
        dims, value = tuple(Dim(n) for n in source.shape), float(source.reshape(-1)[0])
    else:
        return None
    rank = max(len(dims), len(shape.dims))
    dims = (Dim(1),) * (rank - len(dims)) + tuple(dims)
    target = (Dim(1),) * (rank - len(shape.dims)) + tuple(shape.dims)
    return [Fill(tuple(t if s.size == 1 else s for s, t in zip(dims, target)), value)]


def shape_op(node: onnx.NodeProto, inputs: list, opset: int) -> list:
    """Evaluate a node on ShapeVec/Fill/constant inputs, or refuse it naming the node."""
    result = _vec_op(node, inputs, opset) or _fill_op(node, inputs, opset)
    if result is None:
        raise UnsupportedModelError(
            f"{describe(node)}: this use in shape or initial-state computations is not supported; "
            f"supported there: Shape, Gather, Slice, Concat, Unsqueeze, Squeeze, Reshape, Cast, "
            f"Add/Sub/Mul/Div, ConstantOfShape, Expand")
    return result
