"""ONNX LSTM node -> IR LstmLayer, with every check of what we can compile.

Inputs by slot (ONNX spec): X, W, R, B, sequence_lens, initial_h, initial_c, P.
Outputs: Y [T, D, N, H] (layout 0) / [N, T, D, H] (layout 1), Y_h and Y_c [D, N, H] / [N, D, H].
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import ModelFormatError
from ..ir import LstmLayer, to_canonical_gate_order
from .onnx_data_ops import ImportContext, refuse
from .onnx_graph import describe, node_attrs
from .onnx_values import UNIT, Axis, Blocked, Data, Fill

DEFAULT_ACTIVATIONS = ["sigmoid", "tanh", "tanh"]
# Which role each axis of X has, by layout.
X_ROLES = {0: ("time", "batch", "feature"), 1: ("batch", "time", "feature")}
PROJ_HINT = ("this is what the PyTorch exporter writes for an LSTM with proj_size (it drops the "
             "projection weights); proj_size is not supported")


def check_attributes(node, attrs: dict) -> None:
    direction = attrs.get("direction", "forward")
    if direction == "bidirectional":
        raise refuse(node, "direction=bidirectional is not supported yet (forward and reverse are)")
    if direction not in ("forward", "reverse"):
        raise ModelFormatError(f"{describe(node)}: unknown direction '{direction}'")
    if attrs.get("input_forget", 0):
        raise refuse(node, "input_forget=1 (coupled input and forget gates) is not supported")
    if "clip" in attrs:
        raise refuse(node, f"the clip attribute (cell clipping at {attrs['clip']}) is not supported")
    activations = attrs.get("activations")
    if activations is not None and [a.lower() for a in activations] != DEFAULT_ACTIVATIONS:
        raise refuse(node, f"activations {list(activations)} are not supported; only the default "
                           f"Sigmoid, Tanh, Tanh")
    for extra in ("activation_alpha", "activation_beta"):
        if extra in attrs:
            raise refuse(node, f"the {extra} attribute is not supported (default activations only)")
    if attrs.get("layout", 0) not in X_ROLES:
        raise ModelFormatError(f"{describe(node)}: unknown layout {attrs['layout']}")


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


def hidden_size(node, attrs: dict, w: np.ndarray, r: np.ndarray) -> int:
    """H from W, checked against R and the hidden_size attribute."""
    if w.ndim != 3 or w.shape[0] != 1 or w.shape[1] % 4:
        raise ModelFormatError(f"{describe(node)}: W has shape {list(w.shape)}; expected [1, 4*hidden, input]")
    hidden = w.shape[1] // 4
    declared = attrs.get("hidden_size", hidden)
    if r.ndim != 3 or r.shape[:2] != (1, 4 * hidden) or r.shape[2] != hidden or declared != hidden:
        raise ModelFormatError(f"{describe(node)}: hidden_size={declared}, W {list(w.shape)} and "
                               f"R {list(r.shape)} disagree; {PROJ_HINT}")
    return hidden


def check_initial_state(node, slot: str, value, hidden: int) -> None:
    """Only a zero initial state is supported; its width must match the weights."""
    if value is None:
        return
    if isinstance(value, Data):
        raise refuse(node, f"{slot} computed from the model input is not supported yet (only a zero initial state)")
    if isinstance(value, np.ndarray):
        zero, width = not np.any(value), (value.shape[-1] if value.ndim else None)
    elif isinstance(value, Fill):
        zero, width = value.value == 0, (value.dims[-1].size if value.dims else None)
    else:
        raise refuse(node, f"{slot} must be a constant or a zero tensor built from shapes")
    if not zero:
        raise refuse(node, f"a non-zero {slot} is not supported yet (only a zero initial state)")
    if width is not None and width != hidden:
        raise ModelFormatError(f"{describe(node)}: {slot} has {width} features but the weights give "
                               f"hidden size {hidden}; {PROJ_HINT}")


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
        raise refuse(node, f"dense layer '{x.head[-1].name}' before an LSTM is not supported; "
                           f"dense layers may only follow the last LSTM")
    if x.last_step or x.softmax:
        raise refuse(node, "its input is a single time step or a softmax; an LSTM must read the full sequence")


def lstm_layer(node, attrs, inputs, name: str, input_width: Optional[int]) -> LstmLayer:
    w, r = _weight(node, inputs, 1, "W"), _weight(node, inputs, 2, "R")
    if w is None or r is None:
        raise ModelFormatError(f"{describe(node)}: W and R are required")
    hidden = hidden_size(node, attrs, w, r)
    if input_width is not None and input_width != w.shape[2]:
        raise ModelFormatError(f"{describe(node)}: its input has {input_width} features but W expects {w.shape[2]}")
    b = _weight(node, inputs, 3, "B")
    if b is None:
        b = np.zeros((1, 8 * hidden), np.float32)
    if b.shape != (1, 8 * hidden):
        raise ModelFormatError(f"{describe(node)}: B has shape {list(b.shape)}; expected [1, {8 * hidden}]")
    bias = b[0, :4 * hidden] + b[0, 4 * hidden:]  # the IR keeps Wb + Rb as one bias
    return LstmLayer(w_x=to_canonical_gate_order(w[0], "onnx"), w_h=to_canonical_gate_order(r[0], "onnx"),
                     bias=to_canonical_gate_order(bias, "onnx"),
                     reverse=attrs.get("direction", "forward") == "reverse", name=name)


def op_lstm(ctx: ImportContext, node, inputs) -> list:
    attrs = node_attrs(node)
    check_attributes(node, attrs)
    inputs = list(inputs) + [None] * (8 - len(inputs))
    if not isinstance(inputs[0], Data):
        raise refuse(node, "its input X must be computed from the model input")
    x = inputs[0]
    _check_input(node, x)
    if inputs[4] is not None:
        raise refuse(node, "the sequence_lens input is not supported (all sequences have the full length)")
    layout = attrs.get("layout", 0)
    time, batch, feature = _bind_axes(ctx, node, x, layout)
    layer = lstm_layer(node, attrs, inputs, node.name or f"lstm{ctx.lstm_count}", feature.size)
    peephole = _weight(node, inputs, 7, "P")
    if peephole is not None and np.any(peephole):
        raise refuse(node, "peephole weights P are not supported")
    for slot, k in (("initial_h", 5), ("initial_c", 6)):
        check_initial_state(node, slot, inputs[k], layer.hidden_size)
    ctx.lstm_count += 1
    return _outputs(node, x, layer, layout, time, batch)


def _outputs(node, x: Data, layer: LstmLayer, layout: int, time: Axis, batch: Axis) -> list:
    hidden = Axis(f"feature:{node.output[0] or node.name}", layer.hidden_size)
    unit = Axis(UNIT, 1)
    stack = x.lstm + (layer,)
    if layout == 0:
        y, y_h = (time, unit, batch, hidden), (unit, batch, hidden)
    else:
        y, y_h = (batch, time, unit, hidden), (batch, unit, hidden)
    return [Data(y, stack), Data(y_h, stack, last_step=True),
            Blocked(f"Y_c (the final cell state) of {describe(node)}; only Y and Y_h are supported")]
