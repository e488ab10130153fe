"""The model's data path: what each supported node does to a Data value.

A Data value records the axes of a tensor computed from the model input and the layers
applied to it so far. Plumbing nodes (Transpose, Squeeze, Reshape, ...) only move axes;
Gather/Slice on the time axis take the last step; Gemm / MatMul(+Add) / activations /
Softmax add to the dense head. Anything else is refused with one line naming the node.

The outputs of a bidirectional layer carry a num_directions axis (size 2). A Reshape that merges
it with the features that follow it ([..., 2, H] -> [..., 2H]) gives the per-step
[forward, backward] concatenation the IR's BidirectionalLayer emits; so does a Gather/Slice of
each direction followed by a Concat of [forward, backward] along the features.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import List, Optional, Tuple

import numpy as np
import onnx

from ..errors import ModelFormatError, UnsupportedModelError
from ..ir import Activation, BidirectionalLayer, DenseLayer
from .onnx_graph import axes_param, describe, int_list, node_attrs, slice_params
from .onnx_values import (DIRECTIONS, FIRST, LAST, MERGED, UNIT, Axis, AxisRoles, Blocked, Data, StateStack,
                          as_shape_vec, index_kind, positions, shape_of)

DATA_PATH_SUPPORT = ("supported: LSTM, GRU, Gemm, MatMul, Add (bias), Relu, Tanh, Sigmoid, Softmax, "
                     "LogSoftmax, Gather/Slice of the last time step or of one direction, Concat of "
                     "the two directions, and Transpose, Squeeze, Unsqueeze, Reshape, Flatten, "
                     "Identity, Cast, Dropout")


@dataclass
class ImportContext:
    """State shared by the handlers while one graph is walked."""

    opset: int
    roles: AxisRoles = field(default_factory=AxisRoles)
    lstm_count: int = 0
    dense_count: int = 0
    # MERGED label -> (the batch and time axes it joins, in order; the refusal if never split back)
    merged: dict = field(default_factory=dict)
    # (graph input, layer index, "hidden" | "cell", bidirectional) per initial-state slot fed by a graph input
    state_inputs: list = field(default_factory=list)
    # (graph input, layer index) per sequence_lens slot fed by a graph input
    lens_inputs: list = field(default_factory=list)

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
                        f"size-1 axes, or merge num_directions into the features right after it, are "
                        f"supported (not merging or splitting batch, time and feature)")


def _merges_directions(ctx, entry, axes: List[Axis], k: int, last_entry: bool) -> bool:
    """Does the Reshape target entry merge axes[k] (num_directions) with the features after it,
    [.., 2, H] -> [.., 2H] (each step's [forward, backward])?"""
    if k + 1 >= len(axes) or ctx.roles.role(axes[k].label) != "direction" \
            or ctx.roles.role(axes[k + 1].label) != "feature":
        return False
    if entry.label is None and entry.size == -1:
        return True
    width = axes[k + 1].size
    if width is None or entry.size != 2 * width or entry.label not in (None, axes[k].label):
        return False
    return not _fits(entry, axes[k]) or last_entry  # [.., 2, 1] -> [.., 2] only as the last entry


def reshape_axes(ctx, node, x: Data, entries) -> List[Axis]:
    """Match a Reshape target to the input axes, in order; meaningful axes must stay whole, except
    num_directions and the features after it, which may merge."""
    meaningful = [a for a in x.axes if a.label != UNIT]
    out, k = [], 0
    for n, entry in enumerate(entries):
        while k < len(meaningful) and _droppable(ctx, meaningful[k]) and not _fits(entry, meaningful[k]):
            k += 1
        if _merges_directions(ctx, entry, meaningful, k, n == len(entries) - 1):
            width = meaningful[k + 1].size
            out.append(Axis(f"feature:{node.output[0]}", 2 * width if width is not None else None))
            k += 2
        elif k < len(meaningful) and _fits(entry, meaningful[k]):
            out.append(meaningful[k])
            k += 1
        elif entry.label == UNIT or (entry.label is None and entry.size == 1):
            out.append(Axis(UNIT, 1))
        else:
            raise _reshape_error(ctx, node, x, entries)
    if any(not _droppable(ctx, a) for a in meaningful[k:]):
        raise _reshape_error(ctx, node, x, entries)
    return out


def _merge_batch_time(ctx, node, x: Data, entries) -> Optional[List[Axis]]:
    """[batch, time, F] -> [-1, F] (either order of batch and time): how Keras applies a Dense
    layer to every step (Tensordot). The merged axis may only reach a dense head and be split
    back into the same axes by a later Reshape; None if `entries` are not such a merge."""
    meaningful = [a for a in x.axes if a.label != UNIT]
    if len(entries) != 2 or len(meaningful) != 3:
        return None
    first, second, features = meaningful
    roles = {ctx.roles.role(first.label), ctx.roles.role(second.label)}
    if roles != {"batch", "time"} or ctx.roles.role(features.label) != "feature":
        return None
    size = first.size * second.size if None not in (first.size, second.size) else None
    head, tail = entries
    if head.label is not None or not (head.size == -1 or (size is not None and head.size == size)) \
            or not _fits(tail, features):
        return None
    label = f"{MERGED}{node.output[0]}"
    ctx.merged[label] = ((first, second), refuse(
        node, f"reshapes {ctx.axes_text(x)} to [-1, {features.size or '?'}], merging batch and time, and no later "
              f"Reshape splits them back; only reshapes that add or remove size-1 axes, merge num_directions "
              f"into the features, or merge batch and time around a per-step dense layer (Keras' Tensordot) "
              f"and split them back are supported"))
    return [Axis(label, size), features]


def _split_merged(ctx, node, x: Data, entries) -> Optional[List[Axis]]:
    """Undo _merge_batch_time: the target must give the merged axes back, in order."""
    if not any(a.label in ctx.merged for a in x.axes):
        return None
    parts = tuple(p for a in x.axes for p in (ctx.merged[a.label][0] if a.label in ctx.merged else (a,)))
    try:
        return reshape_axes(ctx, node, x.with_axes(parts), entries)
    except UnsupportedModelError:
        return None


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
    try:
        return [x.with_axes(reshape_axes(ctx, node, x, entries))]
    except UnsupportedModelError:
        axes = _split_merged(ctx, node, x, entries) or _merge_batch_time(ctx, node, x, entries)
        if axes is None:
            raise
        return [x.with_axes(axes)]


def op_flatten(ctx, node, inputs) -> list:
    x = data_input(node, inputs)
    axis = node_attrs(node).get("axis", 1) % (len(x.axes) + 1)
    groups, new = (x.axes[:axis], x.axes[axis:]), []
    for group in groups:
        keep = [a for a in group if not _droppable(ctx, a)]
        if [ctx.roles.role(a.label) for a in keep] == ["direction", "feature"]:  # [2, H] -> [2H]
            width = keep[1].size
            new.append(Axis(f"feature:{node.output[0]}", 2 * width if width is not None else None))
            continue
        if len(keep) > 1:
            raise refuse(node, f"flattens {ctx.axes_text(x)} at axis {axis}, merging "
                               f"{' and '.join(ctx.role(a) for a in keep)}; not supported")
        kept_batch = [a for a in group if a.label != UNIT]
        new.append((keep or kept_batch or [Axis(UNIT, 1)])[0])
    return [x.with_axes(new)]


# --- taking the last time step -------------------------------------------------------------

def final_state_steps(layer) -> Tuple[str, ...]:
    """The time step at which each direction of `layer` ends (what Y_h holds): t = T-1 for a
    forward direction, t = 0 for a reverse one."""
    if isinstance(layer, BidirectionalLayer):
        return (LAST, FIRST)
    return (FIRST,) if layer.reverse else (LAST,)


def last_step_from(x: Data) -> str:
    """ir.FloatModel.last_step_from of a last-step output: "final_state" if each direction was
    read at its final step (Y_h), "last_index" if all were read at t = T-1 (out[:, -1])."""
    if x.steps == final_state_steps(x.lstm[-1]):
        return "final_state"
    if all(s == LAST for s in x.steps):
        return "last_index"
    raise UnsupportedModelError(f"the output reads the directions of layer '{x.lstm[-1].name}' at time "
                                f"steps {list(x.steps)}; supported are the final states and the last step")


def take_last_step(ctx, node, x: Data, kind: str) -> Data:
    """Record that `node` keeps one time step: kind "last", "first", "only" (T = 1) or "other"."""
    if not x.lstm:
        raise refuse(node, "selects time steps before the first recurrent layer; not supported")
    layer = x.lstm[-1]
    if x.padded and kind == LAST:
        raise refuse(node, f"takes time step T-1 of layer '{layer.name}', which reads sequence lengths from graph "
                           f"input '{x.padded}' (Y there is padding for a shorter sequence); with sequence_lens, "
                           f"take the final state Y_h, or the whole sequence Y")
    if kind == "only":  # a single step: the final states and the last index coincide
        return replace(x, steps=final_state_steps(layer))
    if kind not in (LAST, FIRST):
        raise refuse(node, "selects a time step other than the last one; only the last step "
                           "(Gather index -1, Slice [-1:], or the layer's Y_h output) is supported")
    if isinstance(layer, BidirectionalLayer):
        if x.part is None:
            if kind == FIRST:
                raise refuse(node, f"takes time step 0 of bidirectional layer '{layer.name}', where its forward "
                                   f"direction has seen only one step; supported are the last step (out[:, -1]) "
                                   f"and the final states (Y_h)")
            return replace(x, steps=(LAST, LAST))
        if x.part == "forward" and kind == FIRST:
            raise refuse(node, f"takes time step 0 of the forward direction of bidirectional layer "
                               f"'{layer.name}'; only its last step (or Y_h) is supported")
        steps = list(x.steps or (None, None))
        steps[DIRECTIONS.index(x.part)] = kind
        return replace(x, steps=tuple(steps))
    if kind == FIRST and not layer.reverse:
        raise refuse(node, "selects a time step other than the last one; only the last step "
                           "(Gather index -1, Slice [-1:], or the layer's Y_h output) is supported")
    return replace(x, steps=(kind,))


def take_direction(ctx, node, x: Data, kind: str) -> Data:
    """Keep one direction of a bidirectional output: kind "first" (forward) or "last" (backward)."""
    if kind not in (FIRST, LAST):
        raise refuse(node, f"selects both or neither direction of {ctx.axes_text(x)} in an unsupported way")
    return replace(x, part=DIRECTIONS[0 if kind == FIRST else 1])


def op_gather(ctx, node, inputs) -> list:
    x = data_input(node, inputs)
    index = int_list(inputs[1]) if len(inputs) > 1 else None
    if index is None or len(index) != 1:
        raise refuse(node, "only a constant single index is supported (the last time step)")
    axis = node_attrs(node).get("axis", 0) % len(x.axes)
    chosen, role = x.axes[axis], ctx.roles.role(x.axes[axis].label)
    if role == "time":
        x = take_last_step(ctx, node, x, index_kind(index[0], chosen.size))
    elif role == "direction":
        x = take_direction(ctx, node, x, index_kind(index[0], chosen.size))
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
        role = ctx.roles.role(axes[axis].label)
        if role not in ("time", "direction") or len(kinds) != 1:
            raise refuse(node, f"slices the {ctx.role(axes[axis])} axis of {ctx.axes_text(x)}; only "
                               f"taking the last time step, one direction or whole axes is supported")
        x = take_last_step(ctx, node, x, kinds[0]) if role == "time" else take_direction(ctx, node, x, kinds[0])
        axes[axis] = Axis(UNIT, 1)
    return [x.with_axes(axes)]


CONCAT_SUPPORT = ("only joining the two directions of a bidirectional layer, [forward, backward] along "
                  "the features (e.g. torch.cat([h_n[-2], h_n[-1]], -1)), is supported")


def op_concat(ctx, node, inputs) -> list:
    if not all(isinstance(v, Data) for v in inputs):
        raise refuse(node, f"concatenates {len(inputs)} tensors, not all computed from the model input; "
                           f"{CONCAT_SUPPORT}")
    rank = len(inputs[0].axes)
    axis = node_attrs(node).get("axis")
    if axis is None or not -rank <= axis < rank or any(len(v.axes) != rank for v in inputs):
        raise ModelFormatError(f"{describe(node)}: axis {axis} does not fit its inputs of rank "
                               f"{sorted({len(v.axes) for v in inputs})}")
    axis %= rank
    if _stacks_final_states(ctx, inputs, axis):
        return [_state_stack(ctx, node, inputs, axis)]
    if len(inputs) != 2:
        raise refuse(node, f"concatenates {len(inputs)} tensors; {CONCAT_SUPPORT}")
    first, second = inputs
    if first.part != "forward" or second.part != "backward" or len(first.lstm) != len(second.lstm) \
            or first.lstm[-1] is not second.lstm[-1] or first.head or second.head \
            or first.softmax or second.softmax:
        raise refuse(node, f"concatenates {_what(first)} and {_what(second)}; {CONCAT_SUPPORT}")
    same = all(a.label == b.label for k, (a, b) in enumerate(zip(first.axes, second.axes)) if k != axis)
    if ctx.roles.role(first.axes[axis].label) != "feature" or not same:
        raise refuse(node, f"concatenates {ctx.axes_text(first)} and {ctx.axes_text(second)} along axis "
                           f"{axis}; {CONCAT_SUPPORT}")
    if (first.steps is None) != (second.steps is None):
        raise refuse(node, f"joins a whole sequence with a single time step; {CONCAT_SUPPORT}")
    steps = None if first.steps is None else (first.steps[0], second.steps[1])
    if steps is not None and None in steps:
        raise refuse(node, f"joins a whole sequence with a single time step; {CONCAT_SUPPORT}")
    width_a, width_b = first.axes[axis].size, second.axes[axis].size
    merged = Axis(f"feature:{node.output[0]}", width_a + width_b if None not in (width_a, width_b) else None)
    axes = first.axes[:axis] + (merged,) + first.axes[axis + 1:]
    return [replace(first, axes=axes, part=None, steps=steps)]


def _stacks_final_states(ctx, inputs, axis: int) -> bool:
    """Is this Concat stacking Y_h outputs along their num_directions axis (PyTorch's h_n)?"""
    return all(x.steps is not None and x.part is None and not x.head and not x.softmax
               and ctx.roles.role(x.axes[axis].label) in ("unit", "direction")
               and all(a.label == b.label or ctx.roles.role(a.label) == ctx.roles.role(b.label) == "feature"
                       for k, (a, b) in enumerate(zip(x.axes, inputs[0].axes)) if k != axis)
               for x in inputs)


def _state_stack(ctx, node, inputs, axis: int) -> StateStack:
    widths = {a.size for x in inputs for a in x.axes if ctx.roles.role(a.label) == "feature"}
    if len(widths - {None}) > 1:
        raise ModelFormatError(f"{describe(node)}: concatenates final states of different widths "
                               f"{sorted(widths - {None})}")
    slots = []
    for x in inputs:
        rest = x.axes[:axis] + x.axes[axis + 1:]
        if ctx.roles.role(x.axes[axis].label) == "direction":
            slots += [replace(x, axes=rest, part=part) for part in DIRECTIONS]
        else:
            slots.append(replace(x, axes=rest))
    return StateStack(tuple(slots), axis)


STACK_SUPPORT = ("only taking one entry (e.g. h_n[-1], or h_n[-2] and h_n[-1] concatenated) is supported")


def stack_op(ctx, node, inputs) -> list:
    """Gather/Slice of one entry of stacked final states; anything else is refused."""
    stack = inputs[0] if inputs and isinstance(inputs[0], StateStack) else None
    if stack is None or node.op_type not in ("Gather", "Slice", "Identity"):
        raise refuse(node, f"uses the final states of several layers stacked together (PyTorch's h_n); "
                           f"{STACK_SUPPORT}")
    if node.op_type == "Identity":
        return [stack]
    rank = len(stack.slots[0].axes) + 1
    count = len(stack.slots)
    if node.op_type == "Gather":
        index = int_list(inputs[1]) if len(inputs) > 1 else None
        axis = node_attrs(node).get("axis", 0) % rank
        if index is None or len(index) != 1 or axis != stack.axis or not -count <= index[0] < count:
            raise refuse(node, f"gathers from the stacked final states in an unsupported way; {STACK_SUPPORT}")
        chosen, keep = stack.slots[index[0]], np.ndim(inputs[1]) != 0
    else:
        kept = None
        for axis, start, end, step in slice_params(node, inputs, ctx.opset, rank):
            if axis == stack.axis:
                kept = list(range(count))[slice(start, end, step)]
            elif positions(start, end, step, None) != ("all",):
                kept = []
        if kept is None or len(kept) != 1:
            raise refuse(node, f"slices the stacked final states in an unsupported way; {STACK_SUPPORT}")
        chosen, keep = stack.slots[kept[0]], True
    if keep:
        chosen = chosen.with_axes(chosen.axes[:stack.axis] + (Axis(UNIT, 1),) + chosen.axes[stack.axis:])
    return [chosen]


def _what(x: Data) -> str:
    if x.part:
        return f"the {x.part} direction of '{x.lstm[-1].name}'"
    return f"the output of '{x.lstm[-1].name}'" if x.lstm else "the model input"


# --- dense head ----------------------------------------------------------------------------

def _check_head_input(node, x: Data) -> None:
    if not x.lstm:
        raise refuse(node, "a layer before the first LSTM is not supported")
    if x.softmax:
        raise refuse(node, f"a layer after the final {x.softmax} is not supported")
    check_directions_merged(node, x)


def check_directions_merged(node, x: Data) -> None:
    """A dense layer, a recurrent layer or the output needs both directions side by side."""
    if not x.lstm:
        return
    name = x.lstm[-1].name
    if x.part:
        raise refuse(node, f"reads only the {x.part} direction of bidirectional layer '{name}' (e.g. h_n[-1] of "
                           f"a bidirectional PyTorch RNN); only both directions, concatenated [forward, backward], "
                           f"are supported (torch.cat([h_n[-2], h_n[-1]], -1))")
    if any(a.label.startswith("direction") for a in x.axes):
        raise refuse(node, f"its input still has the num_directions axis of bidirectional layer '{name}'; "
                           f"merge it into the features first (Transpose + Reshape to [..., 2*hidden])")


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


def sum_directions(ctx, node, first: Data, second: Data) -> Data:
    """forward + backward of one bidirectional layer: its sum merge (Keras merge_mode="sum")."""
    layer = first.lstm[-1]
    if len(first.lstm) != len(second.lstm) or layer is not second.lstm[-1] or first.head or second.head \
            or first.softmax or second.softmax or len(first.axes) != len(second.axes) \
            or any(a.label != b.label for a, b in zip(first.axes, second.axes)):
        raise refuse(node, f"adds {_what(first)} and {_what(second)}; only the two directions of one "
                           f"bidirectional layer (a sum merge) can be added")
    if first.steps is not None or second.steps is not None:
        raise refuse(node, f"adds single time steps of the directions of '{layer.name}'; a sum merge is "
                           f"supported on the whole sequence (take the last step after the Add)")
    axes = tuple(Axis(f"feature:{node.output[0]}", a.size) if ctx.roles.role(a.label) == "feature" else a
                 for a in first.axes)
    merged = replace(layer, merge="sum")
    return replace(first, axes=axes, lstm=first.lstm[:-1] + (merged,), part=None)


def op_add(ctx, node, inputs) -> list:
    data_slots = [k for k, v in enumerate(inputs[:2]) if isinstance(v, Data)]
    parts = {inputs[k].part for k in data_slots}
    if len(data_slots) == 2 and parts == {"forward", "backward"}:
        return [sum_directions(ctx, node, *sorted(inputs[:2], key=lambda v: v.part != "forward"))]
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
    "Concat": op_concat, "Gemm": op_gemm, "MatMul": op_matmul, "Add": op_add,
    "Relu": op_activation, "Tanh": op_activation, "Sigmoid": op_activation,
    "Softmax": op_softmax, "LogSoftmax": op_softmax,
}
