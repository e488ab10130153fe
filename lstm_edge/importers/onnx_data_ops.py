"""The model's data path: what each supported node does to a Data value.

A Data value records the axes of a tensor computed from the model input and the layers
applied to it so far. Plumbing nodes (Transpose, Squeeze, Reshape, ...) only move axes;
Gather/Slice on the time axis take the last step; Gemm / MatMul(+Add) / activations /
Softmax add to the dense head. Anything else is refused with one line naming the node.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import List, Optional

import numpy as np
import onnx

from ..errors import ModelFormatError, UnsupportedModelError
from ..ir import Activation, DenseLayer
from .onnx_graph import axes_param, describe, int_list, node_attrs, slice_params
from .onnx_values import (UNIT, Axis, AxisRoles, Blocked, Data, as_shape_vec, index_kind, positions,
                          shape_of)

DATA_PATH_SUPPORT = ("supported: LSTM, Gemm, MatMul, Add (bias), Relu, Tanh, Sigmoid, Softmax, "
                     "LogSoftmax, Gather/Slice of the last time step, and Transpose, Squeeze, "
                     "Unsqueeze, Reshape, Flatten, Identity, Cast, Dropout")


@dataclass
class ImportContext:
    """State shared by the handlers while one graph is walked."""

    opset: int
    roles: AxisRoles = field(default_factory=AxisRoles)
    lstm_count: int = 0
    dense_count: int = 0

    def role(self, axis: Axis) -> str:
        return self.roles.role(axis.label) or f"input axis {axis.label[2:]}"

    def axes_text(self, x: Data) -> str:
        return "[" + ", ".join(self.role(a) for a in x.axes) + "]"


def refuse(node: onnx.NodeProto, what: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{describe(node)}: {what}")


def data_input(node, inputs, k: int = 0) -> Data:
    if k >= len(inputs) or not isinstance(inputs[k], Data):
        raise refuse(node, f"input {k} must be the tensor computed from the model input")
    return inputs[k]


def const_input(node, inputs, k: int, what: str) -> Optional[np.ndarray]:
    """Input k as a float32 constant (None if the optional input is absent)."""
    if k >= len(inputs) or inputs[k] is None:
        return None
    if not isinstance(inputs[k], np.ndarray):
        raise refuse(node, f"{what} must be a constant (an initializer, or computed from initializers)")
    return np.asarray(inputs[k], dtype=np.float32)


def feature_index(ctx: ImportContext, node, x: Data) -> int:
    found = [k for k, a in enumerate(x.axes) if ctx.roles.role(a.label) == "feature"]
    if len(found) != 1:
        raise refuse(node, f"its input has axes {ctx.axes_text(x)}, with no single feature axis")
    return found[0]


# --- plumbing ------------------------------------------------------------------------------

def op_identity(ctx, node, inputs) -> list:
    x = data_input(node, inputs)
    if node.op_type == "Dropout" and len(inputs) > 2 and inputs[2] is not None:
        if int_list(np.asarray(inputs[2]).astype(np.int64)) != [0]:
            raise refuse(node, "training_mode must be a constant false")
    if node.op_type == "Cast" and node_attrs(node).get("to") not in (onnx.TensorProto.FLOAT,
                                                                     onnx.TensorProto.DOUBLE):
        raise refuse(node, "only casts to float or double are supported on the data path")
    return [x] + [Blocked(f"the mask output of {describe(node)}")] * (len(node.output) - 1)


def op_shape(ctx, node, inputs) -> list:
    return [shape_of(node, data_input(node, inputs).dims)]


def op_transpose(ctx, node, inputs) -> list:
    x = data_input(node, inputs)
    perm = node_attrs(node).get("perm", list(reversed(range(len(x.axes)))))
    return [x.with_axes(x.axes[p] for p in perm)]


def _droppable(ctx: ImportContext, axis: Axis) -> bool:
    """Size-1 axes that may vanish: meaningless ones, and a batch axis fixed at 1 by the export."""
    return axis.label == UNIT or (ctx.roles.role(axis.label) == "batch" and axis.size == 1)


def op_squeeze(ctx, node, inputs) -> list:
    x = data_input(node, inputs)
    axes = axes_param(node, inputs, ctx.opset)
    rank = len(x.axes)
    drop = {a % rank for a in axes} if axes else {k for k, a in enumerate(x.axes) if a.size == 1}
    for k in sorted(drop):
        if not _droppable(ctx, x.axes[k]):
            raise refuse(node, f"squeezes axis {k} ({ctx.role(x.axes[k])}) of {ctx.axes_text(x)}; "
                               f"only size-1 axes such as num_directions can be squeezed")
    return [x.with_axes(a for k, a in enumerate(x.axes) if k not in drop)]


def op_unsqueeze(ctx, node, inputs) -> list:
    x = data_input(node, inputs)
    axes = axes_param(node, inputs, ctx.opset) or []
    new, rank = list(x.axes), len(x.axes) + len(axes)
    for a in sorted(k % rank for k in axes):
        new.insert(a, Axis(UNIT, 1))
    return [x.with_axes(new)]


def _fits(entry, axis: Axis) -> bool:
    """Can a Reshape target entry be `axis` unchanged?"""
    if entry.label is not None and entry.label != UNIT:
        return entry.label == axis.label  # read from this very axis by a Shape node
    if entry.label is None and entry.size == -1:
        return True
    return entry.size is not None and axis.size is not None and entry.size == axis.size


def _reshape_error(ctx, node, x: Data, entries) -> UnsupportedModelError:
    target = ", ".join("?" if e.size is None else str(e.size) for e in entries)
    return refuse(node, f"reshapes {ctx.axes_text(x)} to [{target}]; only reshapes that add or remove "
                        f"size-1 axes are supported (not merging or splitting batch, time and feature)")


def reshape_axes(ctx, node, x: Data, entries) -> List[Axis]:
    """Match a Reshape target to the input axes, in order; meaningful axes must stay whole."""
    meaningful = [a for a in x.axes if a.label != UNIT]
    out, k = [], 0
    for entry in entries:
        while k < len(meaningful) and _droppable(ctx, meaningful[k]) and not _fits(entry, meaningful[k]):
            k += 1
        if k < len(meaningful) and _fits(entry, meaningful[k]):
            out.append(meaningful[k])
            k += 1
        elif entry.label == UNIT or (entry.label is None and entry.size == 1):
            out.append(Axis(UNIT, 1))
        else:
            raise _reshape_error(ctx, node, x, entries)
    if any(not _droppable(ctx, a) for a in meaningful[k:]):
        raise _reshape_error(ctx, node, x, entries)
    return out


def op_reshape(ctx, node, inputs) -> list:
    x = data_input(node, inputs)
    target = as_shape_vec(inputs[1]) if len(inputs) > 1 else None
    if target is None or target.scalar:
        raise refuse(node, "its shape must be computed from constants and tensor shapes")
    allow_zero = node_attrs(node).get("allowzero", 0)
    entries = []
    for k, entry in enumerate(target.dims):
        if entry.label is None and entry.size == 0 and not allow_zero:
            if k >= len(x.axes):
                raise _reshape_error(ctx, node, x, target.dims)
            entry = x.dims[k]  # 0 copies the input's size at that position
        entries.append(entry)
    return [x.with_axes(reshape_axes(ctx, node, x, entries))]


def op_flatten(ctx, node, inputs) -> list:
    x = data_input(node, inputs)
    axis = node_attrs(node).get("axis", 1) % (len(x.axes) + 1)
    groups, new = (x.axes[:axis], x.axes[axis:]), []
    for group in groups:
        keep = [a for a in group if not _droppable(ctx, a)]
        if len(keep) > 1:
            raise refuse(node, f"flattens {ctx.axes_text(x)} at axis {axis}, merging "
                               f"{' and '.join(ctx.role(a) for a in keep)}; not supported")
        kept_batch = [a for a in group if a.label != UNIT]
        new.append((keep or kept_batch or [Axis(UNIT, 1)])[0])
    return [x.with_axes(new)]


# --- taking the last time step -------------------------------------------------------------

def take_last_step(ctx, node, x: Data, kind: str) -> Data:
    if not x.lstm:
        raise refuse(node, "selects time steps before the first LSTM; not supported")
    layer = x.lstm[-1]
    wanted = "first" if layer.reverse else "last"
    if kind in (wanted, "only"):
        return replace(x, last_step=True)
    if layer.reverse and kind == "last":
        raise refuse(node, f"takes the last time step of reverse LSTM '{layer.name}', which has seen only "
                           f"that one step; for a reverse LSTM the final state is step 0 (or Y_h)")
    raise refuse(node, "selects a time step other than the last one; only the last step "
                       "(Gather index -1, Slice [-1:], or the LSTM's Y_h output) is supported")


def op_gather(ctx, node, inputs) -> list:
    x = data_input(node, inputs)
    index = int_list(inputs[1]) if len(inputs) > 1 else None
    if index is None or len(index) != 1:
        raise refuse(node, "only a constant single index is supported (the last time step)")
    axis = node_attrs(node).get("axis", 0) % len(x.axes)
    chosen, role = x.axes[axis], ctx.roles.role(x.axes[axis].label)
    if role == "time":
        x = take_last_step(ctx, node, x, index_kind(index[0], chosen.size))
    elif not (_droppable(ctx, chosen) and index[0] in (0, -1)):
        raise refuse(node, f"gathers along the {ctx.role(chosen)} axis of {ctx.axes_text(x)}; only "
                           f"taking the last time step or dropping a size-1 axis is supported")
    kept = () if np.ndim(inputs[1]) == 0 else (Axis(UNIT, 1),)
    return [x.with_axes(x.axes[:axis] + kept + x.axes[axis + 1:])]


def op_slice(ctx, node, inputs) -> list:
    x = data_input(node, inputs)
    axes = list(x.axes)
    for axis, start, end, step in slice_params(node, inputs, ctx.opset, len(axes)):
        kinds = positions(start, end, step, axes[axis].size)
        if kinds == ("all",):
            continue
        if ctx.roles.role(axes[axis].label) != "time" or len(kinds) != 1:
            raise refuse(node, f"slices the {ctx.role(axes[axis])} axis of {ctx.axes_text(x)}; only "
                               f"taking the last time step or whole axes is supported")
        x = take_last_step(ctx, node, x, kinds[0])
        axes[axis] = Axis(UNIT, 1)
    return [x.with_axes(axes)]


# --- dense head ----------------------------------------------------------------------------

def _check_head_input(node, x: Data) -> None:
    if not x.lstm:
        raise refuse(node, "a layer before the first LSTM is not supported")
    if x.softmax:
        raise refuse(node, f"a layer after the final {x.softmax} is not supported")


def _with_dense(ctx, node, x: Data, w: np.ndarray, b: np.ndarray, feature_at: int) -> Data:
    _check_head_input(node, x)
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
        raise ModelFormatError(f"{describe(node)}: its weights contain NaN or Inf")
    try:
        dense = DenseLayer(w, b, name=node.name or f"dense{ctx.dense_count}")
    except ModelFormatError as exc:
        raise ModelFormatError(f"{describe(node)}: {exc}") from None
    ctx.dense_count += 1
    axes = list(x.axes)
    axes[feature_at] = Axis(f"feature:{node.output[0]}", dense.output_size)
    return replace(x, axes=tuple(axes), head=x.head + (dense,))


def _check_width(node, what: str, have: Optional[int], want: int) -> None:
    if have is not None and have != want:
        raise ModelFormatError(f"{describe(node)}: {what} expects {want} input features but receives {have}")


def op_gemm(ctx, node, inputs) -> list:
    attrs = node_attrs(node)
    x = data_input(node, inputs)
    _check_head_input(node, x)
    if attrs.get("transA", 0):
        raise refuse(node, "transA=1 is not supported (the input must be [batch, features])")
    if len(x.axes) != 2 or ctx.roles.role(x.axes[1].label) != "feature":
        raise refuse(node, f"its input has axes {ctx.axes_text(x)}; Gemm is supported on [batch, features]")
    weight = const_input(node, inputs, 1, "B (the weight)")
    if weight.ndim != 2:
        raise ModelFormatError(f"{describe(node)}: B has shape {list(weight.shape)}; expected 2-D")
    k_by_m = weight.T if attrs.get("transB", 0) else weight
    _check_width(node, "B", x.axes[1].size, k_by_m.shape[0])
    bias = _gemm_bias(node, const_input(node, inputs, 2, "C (the bias)"), k_by_m.shape[1])
    w = attrs.get("alpha", 1.0) * k_by_m.T
    return [_with_dense(ctx, node, x, w, attrs.get("beta", 1.0) * bias, 1)]


def _gemm_bias(node, c: Optional[np.ndarray], units: int) -> np.ndarray:
    if c is None:
        return np.zeros(units, np.float32)
    if c.ndim == 2 and c.shape[0] != 1:
        raise refuse(node, f"its bias C has shape {list(c.shape)}; only a bias shared by all rows is supported")
    flat = c.reshape(-1)
    if c.ndim > 2 or flat.size not in (1, units):
        raise ModelFormatError(f"{describe(node)}: bias C has shape {list(c.shape)}; expected [{units}]")
    return np.broadcast_to(flat, (units,)).astype(np.float32)


def op_matmul(ctx, node, inputs) -> list:
    if not (isinstance(inputs[0], Data) and isinstance(inputs[1], np.ndarray)):
        raise refuse(node, "only (data @ constant weight) is supported")
    x = data_input(node, inputs)
    _check_head_input(node, x)
    weight = const_input(node, inputs, 1, "the weight")
    while weight.ndim > 2 and weight.shape[0] == 1:  # broadcast batch dims of size 1
        weight = weight[0]
    if weight.ndim != 2:
        raise refuse(node, f"its weight has shape {list(weight.shape)}; a 2-D [in, out] matrix is supported")
    at = feature_index(ctx, node, x)
    if at != len(x.axes) - 1:
        raise refuse(node, f"its input has axes {ctx.axes_text(x)}; the features must be the last axis")
    _check_width(node, "the weight", x.axes[at].size, weight.shape[0])
    return [_with_dense(ctx, node, x, weight.T, np.zeros(weight.shape[1], np.float32), at)]


def op_add(ctx, node, inputs) -> list:
    data_slots = [k for k, v in enumerate(inputs[:2]) if isinstance(v, Data)]
    if len(data_slots) != 1:
        raise refuse(node, "adds two tensors computed from the input (e.g. a residual connection); "
                           "only a constant bias after MatMul/Gemm is supported")
    x = inputs[data_slots[0]]
    constant = const_input(node, inputs, 1 - data_slots[0], "the other operand")
    if not x.head or x.head[-1].activation != Activation.NONE or x.softmax:
        raise refuse(node, "Add is supported only as the bias right after a MatMul or Gemm")
    at = feature_index(ctx, node, x)
    dense = x.head[-1]
    bias = _broadcast_bias(ctx, node, x, constant, at, dense.output_size)
    updated = DenseLayer(dense.w, dense.b + bias, dense.activation, dense.name)
    return [replace(x, head=x.head[:-1] + (updated,))]


def _broadcast_bias(ctx, node, x: Data, c: np.ndarray, at: int, units: int) -> np.ndarray:
    """A constant added to the data must vary along the feature axis only."""
    if not np.all(np.isfinite(c)):
        raise ModelFormatError(f"{describe(node)}: its bias contains NaN or Inf")
    offset = len(x.axes) - c.ndim
    ok = offset >= 0 and all(n == 1 or (offset + j == at and n == units) for j, n in enumerate(c.shape))
    if not ok:
        raise refuse(node, f"adds a constant of shape {list(c.shape)} to {ctx.axes_text(x)}; only a bias "
                           f"along the feature axis is supported")
    return np.broadcast_to(c.reshape(-1) if c.size == units else c.reshape(-1)[:1], (units,))


_ACTIVATIONS = {"Relu": Activation.RELU, "Tanh": Activation.TANH, "Sigmoid": Activation.SIGMOID}


def op_activation(ctx, node, inputs) -> list:
    x = data_input(node, inputs)
    _check_head_input(node, x)
    if not x.head:
        raise refuse(node, "an activation directly on an LSTM output is not supported; Relu, Tanh and "
                           "Sigmoid are supported after a dense layer (Gemm, or MatMul + Add)")
    dense = x.head[-1]
    if dense.activation != Activation.NONE:
        raise refuse(node, f"a second activation after dense layer '{dense.name}' is not supported")
    updated = DenseLayer(dense.w, dense.b, _ACTIVATIONS[node.op_type], dense.name)
    return [replace(x, head=x.head[:-1] + (updated,))]


def op_softmax(ctx, node, inputs) -> list:
    x = data_input(node, inputs)
    _check_head_input(node, x)
    rank = len(x.axes)
    axis = node_attrs(node).get("axis", -1 if ctx.opset >= 13 else 1) % rank
    roles = [ctx.roles.role(a.label) for a in x.axes]
    if ctx.opset >= 13:
        over_features = roles[axis] == "feature"
    else:  # before opset 13 the input is flattened to 2-D at `axis`
        over_features = "feature" in roles[axis:] and all(
            r == "feature" or a.size == 1 for r, a in zip(roles[axis:], x.axes[axis:]))
    if not over_features:
        raise refuse(node, f"it is taken over axis {axis} of {ctx.axes_text(x)}; only the feature axis is supported")
    return [replace(x, softmax=node.op_type.lower())]


DATA_OPS = {
    "Identity": op_identity, "Dropout": op_identity, "Cast": op_identity, "Shape": op_shape,
    "Transpose": op_transpose, "Squeeze": op_squeeze, "Unsqueeze": op_unsqueeze,
    "Reshape": op_reshape, "Flatten": op_flatten, "Gather": op_gather, "Slice": op_slice,
    "Gemm": op_gemm, "MatMul": op_matmul, "Add": op_add,
    "Relu": op_activation, "Tanh": op_activation, "Sigmoid": op_activation,
    "Softmax": op_softmax, "LogSoftmax": op_softmax,
}
