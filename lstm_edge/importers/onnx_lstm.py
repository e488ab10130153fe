"""ONNX LSTM and GRU nodes -> IR LstmLayer / GruLayer / BidirectionalLayer, with every check of
what we can compile.

Inputs by slot (ONNX spec): X, W, R, B, sequence_lens, initial_h, then for LSTM initial_c, P.
Outputs: Y [T, D, N, H] (layout 0) / [N, T, D, H] (layout 1), Y_h (and the LSTM's Y_c)
[D, N, H] / [N, D, H]. D (num_directions) is 2 for direction="bidirectional": direction 0 runs
forward over time, direction 1 over reversed time, and its outputs are stored in input time order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Tuple

import numpy as np

from ..errors import ModelFormatError
from ..ir import BidirectionalLayer, GruLayer, LstmLayer, peephole_to_canonical, to_canonical_gate_order
from .onnx_data_ops import ImportContext, check_directions_merged, final_state_steps, refuse
from .onnx_graph import describe, node_attrs
from .onnx_values import UNIT, Axis, Blocked, Data, Fill, LensInput, StateInput

# Which role each axis of X has, by layout.
X_ROLES = {0: ("time", "batch", "feature"), 1: ("batch", "time", "feature")}
DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}
PROJ_HINT = ("this is what the PyTorch exporter writes for an LSTM with proj_size (it drops the "
             "projection weights); proj_size is not supported")


@dataclass(frozen=True)
class CellKind:
    """What differs between the ONNX LSTM and GRU operators."""

    op: str
    cell: str  # the `cell` argument of ir.to_canonical_gate_order
    gates: int
    activations: Tuple[str, ...]  # the default, per direction
    states: Tuple[Tuple[str, int], ...]  # initial-state inputs: (name, slot)
    slots: int  # number of inputs in the spec


LSTM = CellKind("LSTM", "lstm", 4, ("sigmoid", "tanh", "tanh"), (("initial_h", 5), ("initial_c", 6)), 8)
GRU = CellKind("GRU", "gru", 3, ("sigmoid", "tanh"), (("initial_h", 5),), 6)
KINDS = {"LSTM": LSTM, "GRU": GRU}
# Inputs of these nodes that are not the sequence (sequence_lens, initial states, peepholes).
SIDE_INPUT_SLOTS = {"LSTM": range(4, 8), "GRU": range(4, 6), "RNN": range(4, 6)}


def check_attributes(node, attrs: dict, kind: CellKind) -> int:
    """Refuse what cannot be compiled; returns num_directions."""
    direction = attrs.get("direction", "forward")
    if direction not in DIRECTIONS:
        raise ModelFormatError(f"{describe(node)}: unknown direction '{direction}'")
    directions = DIRECTIONS[direction]
    if attrs.get("input_forget", 0) not in (0, 1):
        raise ModelFormatError(f"{describe(node)}: input_forget must be 0 or 1, got {attrs['input_forget']}")
    if kind is GRU and attrs.get("linear_before_reset", 0) not in (0, 1):
        raise ModelFormatError(f"{describe(node)}: linear_before_reset={attrs['linear_before_reset']}; "
                               f"expected 0 or 1")
    if "clip" in attrs and not attrs["clip"] > 0:
        raise ModelFormatError(f"{describe(node)}: clip must be positive, got {attrs['clip']}")
    activations = attrs.get("activations")
    default = list(kind.activations)
    if activations is not None and [a.lower() for a in activations] not in (default, default * directions):
        shown = ", ".join(a.capitalize() for a in kind.activations)
        raise refuse(node, f"activations {list(activations)} are not supported; only the default {shown}")
    for extra in ("activation_alpha", "activation_beta"):
        if extra in attrs:
            raise refuse(node, f"the {extra} attribute is not supported (default activations only)")
    if attrs.get("layout", 0) not in X_ROLES:
        raise ModelFormatError(f"{describe(node)}: unknown layout {attrs['layout']}")
    return directions


def _weight(node, inputs, k: int, name: str) -> Optional[np.ndarray]:
    if k >= len(inputs) or inputs[k] is None:
        return None
    value = inputs[k]
    if not isinstance(value, np.ndarray):
        raise refuse(node, f"{name} must be a constant (an initializer, or computed from initializers)")
    value = np.asarray(value, dtype=np.float32)
    if not np.all(np.isfinite(value)):
        raise ModelFormatError(f"{describe(node)}: {name} contains NaN or Inf")
    return value


def hidden_size(node, attrs: dict, w: np.ndarray, r: np.ndarray, kind: CellKind = LSTM,
                directions: int = 1) -> int:
    """H from W, checked against R and the hidden_size attribute."""
    g = kind.gates
    if w.ndim != 3 or w.shape[0] != directions or w.shape[1] % g:
        raise ModelFormatError(f"{describe(node)}: W has shape {list(w.shape)}; expected "
                               f"[{directions}, {g}*hidden, input] for direction={attrs.get('direction', 'forward')}")
    hidden = w.shape[1] // g
    declared = attrs.get("hidden_size", hidden)
    if r.ndim != 3 or r.shape[:2] != (directions, g * hidden) or r.shape[2] != hidden or declared != hidden:
        hint = f"; {PROJ_HINT}" if kind is LSTM else ""
        raise ModelFormatError(f"{describe(node)}: hidden_size={declared}, W {list(w.shape)} and "
                               f"R {list(r.shape)} disagree{hint}")
    return hidden


def check_initial_state(node, slot: str, value, hidden: int, kind: CellKind = LSTM, directions: int = 1,
                        layout: int = 0):
    """The initial state as one [H] vector per direction, or None for zeros. A constant state is
    the start of every sequence, so all its batch rows must be equal; its width must match the weights."""
    if value is None:
        return None
    if isinstance(value, Data):
        raise refuse(node, f"{slot} computed from the model input is not supported yet (only constant initial states)")
    if isinstance(value, np.ndarray):
        width = value.shape[-1] if value.ndim else None
    elif isinstance(value, Fill):
        width = value.dims[-1].size if value.dims else None
    else:
        raise refuse(node, f"{slot} must be a constant or a tensor filled from shapes")
    if width is not None and width != hidden:
        hint = f"; {PROJ_HINT}" if kind is LSTM else ""
        raise ModelFormatError(f"{describe(node)}: {slot} has {width} features but the weights give "
                               f"hidden size {hidden}{hint}")
    if isinstance(value, Fill):
        return None if value.value == 0 else [np.full(hidden, value.value, np.float32)] * directions
    if not np.any(value):
        return None
    state = np.asarray(value, dtype=np.float32)
    if state.ndim != 3:
        raise ModelFormatError(f"{describe(node)}: {slot} has shape {list(state.shape)}, not 3-D")
    if layout == 1:  # [batch, directions, H] -> [directions, batch, H]
        state = state.transpose(1, 0, 2)
    if state.shape[0] != directions or np.any(state != state[:, :1]):
        raise refuse(node, f"a {slot} that differs between batch entries is not supported (the compiled model "
                           "starts every sequence from one state)")
    return [state[d, 0] for d in range(directions)]


LENS_SUPPORT = ("supported: a graph input (int32 [batch]) that only feeds sequence_lens of LSTM and GRU "
                "nodes (directly or through Identity/Cast), or a constant equal to the sequence length")


def check_sequence_lens(node, value, time: Axis) -> None:
    """A constant sequence_lens is accepted when every entry is the full sequence length (it
    then changes nothing); shorter lengths, and lengths computed otherwise, are refused."""
    if not isinstance(value, np.ndarray):
        raise refuse(node, f"its sequence_lens input is neither a constant nor a graph input; {LENS_SUPPORT}")
    lens = np.asarray(value)
    if lens.ndim != 1 or not np.issubdtype(lens.dtype, np.integer):
        raise ModelFormatError(f"{describe(node)}: sequence_lens has shape {list(lens.shape)} and type "
                               f"{lens.dtype}; expected int32 [batch]")
    if time.size is None:
        raise refuse(node, f"its constant sequence_lens {lens.tolist()} cannot be checked against the sequence "
                           f"length, which the graph input leaves open (all sequences must have the full "
                           f"length); {LENS_SUPPORT}")
    if np.any(lens != time.size):
        raise refuse(node, f"its constant sequence_lens {lens.tolist()} differs from the sequence length "
                           f"{time.size} (a fixed length shorter than the input is not supported); {LENS_SUPPORT}")


def with_peepholes(node, layer, p: np.ndarray, directions: int, hidden: int):
    """ONNX P [num_directions, 3H] (i, o, f) onto the IR layer(s), in canonical (i, f, o) order."""
    if p.shape != (directions, 3 * hidden):
        raise ModelFormatError(f"{describe(node)}: P has shape {list(p.shape)}, expected [{directions}, {3 * hidden}]")
    vectors = [peephole_to_canonical(p[d], "onnx") for d in range(directions)]
    if isinstance(layer, BidirectionalLayer):
        return replace(layer, forward=replace(layer.forward, peephole=vectors[0]),
                       backward=replace(layer.backward, peephole=vectors[1]))
    return replace(layer, peephole=vectors[0])


def with_gate_options(layer, **options):
    """ONNX LSTM clip / input_forget on the IR layer, or on both directions of a bidirectional one."""
    if isinstance(layer, BidirectionalLayer):
        return replace(layer, forward=replace(layer.forward, **options), backward=replace(layer.backward, **options))
    return replace(layer, **options)


def with_initial_state(layer, states: dict):
    """Put per-direction initial vectors {field: [vector per direction]} on the IR layer(s)."""
    if not states:
        return layer
    if isinstance(layer, BidirectionalLayer):
        return replace(layer, forward=replace(layer.forward, **{k: v[0] for k, v in states.items()}),
                       backward=replace(layer.backward, **{k: v[1] for k, v in states.items()}))
    return replace(layer, **{k: v[0] for k, v in states.items()})


def _bind_axes(ctx: ImportContext, node, x: Data, layout: int):
    """The axes of X in (time, batch, feature) order; teaches ctx which input axis is which."""
    if len(x.axes) != 3:
        raise refuse(node, f"its input X has axes {ctx.axes_text(x)}; expected rank 3")
    found = {}
    for k, (axis, wanted) in enumerate(zip(x.axes, X_ROLES[layout])):
        role = ctx.roles.role(axis.label)
        if role is None and axis.label.startswith("in"):
            ctx.roles.bound[axis.label] = role = wanted
        if role != wanted:
            raise refuse(node, f"with layout={layout} reads axis {k} of X as {wanted}, but it is the "
                               f"{ctx.role(axis)} axis; check the Transposes before it")
        found[wanted] = axis
    return found["time"], found["batch"], found["feature"]


def _check_input(node, x: Data) -> None:
    if x.head:
        raise refuse(node, f"dense layer '{x.head[-1].name}' before a recurrent layer is not supported; "
                           f"dense layers may only follow the last recurrent layer")
    if x.last_step or x.softmax:
        raise refuse(node, "its input is a single time step or a softmax; a recurrent layer must read "
                           "the full sequence")
    check_directions_merged(node, x)


def _direction_layer(attrs, kind: CellKind, w, r, b, d: int, hidden: int, name: str, reverse: bool = False):
    """The layer of direction d, gates in canonical order."""
    w_x = to_canonical_gate_order(w[d], "onnx", cell=kind.cell)
    w_h = to_canonical_gate_order(r[d], "onnx", cell=kind.cell)
    split = kind.gates * hidden
    b_x = to_canonical_gate_order(b[d, :split], "onnx", cell=kind.cell)
    b_h = to_canonical_gate_order(b[d, split:], "onnx", cell=kind.cell)
    if kind is GRU:  # Wb and Rb stay apart (the recurrent bias of n is inside r's product)
        return GruLayer(w_x=w_x, w_h=w_h, b_x=b_x, b_h=b_h,
                        linear_before_reset=bool(attrs.get("linear_before_reset", 0)), reverse=reverse, name=name)
    return LstmLayer(w_x=w_x, w_h=w_h, bias=b_x + b_h, reverse=reverse, name=name)  # the IR keeps Wb + Rb as one bias


def recurrent_layer(node, attrs, inputs, kind: CellKind, name: str, input_width: Optional[int]):
    """The IR layer of an LSTM or GRU node: one direction (reverse=True for direction="reverse")
    or a BidirectionalLayer (concat merge, as ONNX stores [forward, backward] per step)."""
    directions = DIRECTIONS[attrs.get("direction", "forward")]
    w, r = _weight(node, inputs, 1, "W"), _weight(node, inputs, 2, "R")
    if w is None or r is None:
        raise ModelFormatError(f"{describe(node)}: W and R are required")
    hidden = hidden_size(node, attrs, w, r, kind, directions)
    if input_width is not None and input_width != w.shape[2]:
        raise ModelFormatError(f"{describe(node)}: its input has {input_width} features but W expects {w.shape[2]}")
    b = _weight(node, inputs, 3, "B")
    bias_width = 2 * kind.gates * hidden
    if b is None:
        b = np.zeros((directions, bias_width), np.float32)
    if b.shape != (directions, bias_width):
        raise ModelFormatError(f"{describe(node)}: B has shape {list(b.shape)}; expected [{directions}, {bias_width}]")
    if directions == 2:
        forward = _direction_layer(attrs, kind, w, r, b, 0, hidden, f"{name}.forward")
        backward = _direction_layer(attrs, kind, w, r, b, 1, hidden, f"{name}.backward")
        return BidirectionalLayer(forward=forward, backward=backward, merge="concat", name=name)
    return _direction_layer(attrs, kind, w, r, b, 0, hidden, name,
                            reverse=attrs.get("direction", "forward") == "reverse")


def op_lstm(ctx: ImportContext, node, inputs) -> list:
    return op_recurrent(ctx, node, inputs, LSTM)


def op_gru(ctx: ImportContext, node, inputs) -> list:
    return op_recurrent(ctx, node, inputs, GRU)


def op_recurrent(ctx: ImportContext, node, inputs, kind: CellKind) -> list:
    attrs = node_attrs(node)
    directions = check_attributes(node, attrs, kind)
    inputs = list(inputs) + [None] * (kind.slots - len(inputs))
    if not isinstance(inputs[0], Data):
        raise refuse(node, "its input X must be computed from the model input")
    x = inputs[0]
    _check_input(node, x)
    layout = attrs.get("layout", 0)
    time, batch, feature = _bind_axes(ctx, node, x, layout)
    if isinstance(inputs[4], LensInput):  # per-sequence lengths: the caller runs each with steps=len
        ctx.lens_inputs.append((inputs[4].name, ctx.lstm_count))
    elif inputs[4] is not None:
        check_sequence_lens(node, inputs[4], time)
    default_name = f"{kind.cell}{ctx.lstm_count}"
    layer = recurrent_layer(node, attrs, inputs, kind, node.name or default_name, feature.size)
    peepholes = _weight(node, inputs, 7, "P") if kind is LSTM else None
    if peepholes is not None and not np.any(peepholes):
        peepholes = None  # all-zero P: the same as none
    hidden = layer.forward.hidden_size if directions == 2 else layer.hidden_size
    states = {}
    for slot, k in kind.states:
        if isinstance(inputs[k], StateInput):  # the caller's state: zeros after reset, kept in NAME_state_t
            ctx.state_inputs.append((inputs[k].name, ctx.lstm_count, "hidden" if slot == "initial_h" else "cell",
                                     directions == 2))
            continue
        vectors = check_initial_state(node, slot, inputs[k], hidden, kind, directions, attrs.get("layout", 0))
        if vectors is not None:
            states[slot] = vectors
    layer = with_initial_state(layer, states)
    if "clip" in attrs:
        layer = with_gate_options(layer, clip=float(attrs["clip"]))
    if kind is LSTM and attrs.get("input_forget", 0):
        layer = with_gate_options(layer, input_forget=True)
    if peepholes is not None:
        layer = with_peepholes(node, layer, peepholes, directions, hidden)
    ctx.lstm_count += 1
    padded = inputs[4].name if isinstance(inputs[4], LensInput) else None
    return _outputs(node, x, layer, layout, time, batch, hidden, directions, kind, padded)


def _outputs(node, x: Data, layer, layout: int, time: Axis, batch: Axis, hidden_width: int,
             directions: int, kind: CellKind, padded: Optional[str] = None) -> list:
    hidden = Axis(f"feature:{node.output[0] or node.name}", hidden_width)
    dirs = Axis(f"direction:{node.output[0] or node.name}", 2) if directions == 2 else Axis(UNIT, 1)
    stack = x.lstm + (layer,)
    if layout == 0:
        y, y_h = (time, dirs, batch, hidden), (dirs, batch, hidden)
    else:
        y, y_h = (batch, time, dirs, hidden), (batch, dirs, hidden)
    results = [Data(y, stack, padded=padded), Data(y_h, stack, steps=final_state_steps(layer))]
    if kind is LSTM:
        results.append(Blocked(f"Y_c (the final cell state) of {describe(node)}; only Y and Y_h are supported"))
    return results
