"""ONNX -> float IR.

The importer walks the nodes the chosen graph output depends on, in order, keeping for every
value what it knows about it (onnx_values): constants are folded, shape computations are
followed symbolically, and the tensor computed from the model input (Data) accumulates the
LSTM layers and dense head that the IR describes. What the walk cannot express in the IR is
refused with one line naming the node and its op type.

Read: LSTM and GRU nodes (forward/reverse/bidirectional, layout 0/1, optional B, absent or zero
initial state, or one fed by a graph input: see state_inputs, GRU linear_before_reset 0 and 1,
sequence_lens fed by a graph input (see lens_inputs) or equal to the sequence length,
stacked in any mix), a head of Gemm or
MatMul(+Add) layers with Relu/Tanh/Sigmoid, per step or on the last step (Gather/Slice on the
time axis: "last_index"; or Y_h: "final_state"), a final Softmax/LogSoftmax, and the plumbing
that PyTorch's legacy and dynamo exporters put around them (for bidirectional layers: merging
num_directions into the features, or concatenating the two directions of Y_h). Refused: RNN,
other sequence_lens, peepholes, input_forget, clip, other activations, initial states varying over the batch,
state or length graph inputs that also feed anything else,
proj_size exports (detected by their inconsistent shapes), one direction of a bidirectional layer
on its own, anything else on the data path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ModelFormatError, UnsupportedModelError
from ..ir import FloatModel
from .onnx_data_ops import (DATA_OPS, DATA_PATH_SUPPORT, STACK_SUPPORT, ImportContext, last_step_from, refuse,
                            stack_op)
from .onnx_graph import DEFAULT_DOMAINS, GraphIndex, describe, first_line, read_model
from .onnx_lstm import KINDS, SIDE_INPUT_SLOTS, op_gru, op_lstm
from .onnx_values import Axis, Blocked, Data, LensInput, StateInput, StateStack, fold_constant_node, shape_op

NOT_YET = {"RNN": "simple RNN"}
RECURRENT_OPS = {"LSTM": op_lstm, "GRU": op_gru}
LAYOUTS = {("batch", "time", "feature"): "batch_first", ("time", "batch", "feature"): "time_major"}
# Ops that may carry an initial-state graph input to the recurrent nodes (per layer / direction pieces of it).
STATE_PLUMBING = ("Identity", "Squeeze", "Unsqueeze", "Slice", "Gather", "Reshape", "Transpose", "Split", "Cast")
STATE_SUPPORT = (f"a graph input for the initial state may only feed initial_h / initial_c of LSTM and GRU nodes, "
                 f"through {', '.join(STATE_PLUMBING)}")
# Ops that may carry a sequence-lengths graph input to the sequence_lens slots.
LENS_PLUMBING = ("Identity", "Cast")
LENS_SLOT = 4
LENS_SUPPORT = (f"a graph input for the sequence lengths may only feed sequence_lens of LSTM and GRU nodes, "
                f"through {', '.join(LENS_PLUMBING)}")
INTEGER_TYPES = (onnx.TensorProto.INT32, onnx.TensorProto.INT64)


@dataclass(frozen=True)
class OnnxImport:
    """The imported model and how the graph's own input and output are laid out.

    output_axes names each axis of the graph output: "batch", "time", "feature" or "unit"
    (a size-1 axis, e.g. num_directions of a raw LSTM output)."""

    model: FloatModel
    input_name: str
    input_layout: str  # "batch_first" or "time_major"
    output_name: str
    output_axes: Tuple[str, ...]


def load_onnx(path, output: Optional[str] = None) -> FloatModel:
    """Import an ONNX file; `output` picks the graph output when there are several."""
    return inspect_onnx(path, output).model


def graph_input_layout(path, output: Optional[str] = None) -> str:
    """"batch_first" if the graph input is [N, T, F], "time_major" if it is [T, N, F]."""
    return inspect_onnx(path, output).input_layout


def inspect_onnx(path, output: Optional[str] = None) -> OnnxImport:
    path = Path(path)
    index = GraphIndex.build(read_model(path), path)
    output_name = choose_output(index, output)
    states = state_inputs(index, output_name)
    lens = lens_inputs(index, output_name)
    input_info = sequence_input(index, output_name, states + lens)
    ctx = ImportContext(opset=index.opset)
    final = _walk(index, ctx, input_info, output_name, states, lens)
    return _assemble(path, ctx, final, input_info.name, output_name)


def choose_output(index: GraphIndex, output: Optional[str]) -> str:
    names = index.output_names
    listing = ", ".join(f"'{n}'" for n in names)
    if output is None:
        if len(names) == 1:
            return names[0]
        raise UnsupportedModelError(f"'{index.path}' has {len(names)} outputs ({listing}); choose one "
                                    f"with output=NAME (command line: --output NAME)")
    if output in names or output in index.producers:
        return output
    raise ModelFormatError(f"'{index.path}' has no output '{output}'; its outputs are {listing}")


def state_inputs(index: GraphIndex, output_name: str) -> Tuple[str, ...]:
    """The graph inputs the output depends on that are initial states (streaming exports:
    forward(x, h0, c0)): followed through STATE_PLUMBING, they reach initial_h / initial_c slots
    of LSTM/GRU nodes. One that reaches such a slot but also anything else is refused."""
    return _side_inputs(index, output_name, lambda kind, slot: slot in dict(kind.states).values(), STATE_PLUMBING,
                        "an initial state", STATE_SUPPORT)


def lens_inputs(index: GraphIndex, output_name: str) -> Tuple[str, ...]:
    """The graph inputs the output depends on that are sequence lengths (int32 [batch]): followed
    through LENS_PLUMBING, they reach sequence_lens slots of LSTM/GRU nodes. One that reaches such
    a slot but also anything else is refused. The compiled model takes one sequence at a time,
    so the caller runs each with its own length (NAME_run(..., steps=len))."""
    found = _side_inputs(index, output_name, lambda kind, slot: slot == LENS_SLOT, LENS_PLUMBING,
                         "the sequence lengths", LENS_SUPPORT)
    for name in found:
        tensor_type = index.free_inputs[name].type.tensor_type
        if tensor_type.elem_type not in INTEGER_TYPES or (
                tensor_type.HasField("shape") and len(tensor_type.shape.dim) != 1):
            rank = len(tensor_type.shape.dim) if tensor_type.HasField("shape") else "unknown"
            raise UnsupportedModelError(
                f"graph input '{name}' feeds sequence_lens but is not an int32 vector [batch] (element type "
                f"{onnx.TensorProto.DataType.Name(tensor_type.elem_type)}, rank {rank})")
    if len(found) > 1:
        raise UnsupportedModelError(f"'{index.path}': graph inputs {', '.join(map(repr, found))} all feed "
                                    f"sequence_lens; only one graph input of sequence lengths is supported")
    return found


def _side_inputs(index: GraphIndex, output_name: str, is_target, plumbing: Tuple[str, ...], what: str,
                 support: str) -> Tuple[str, ...]:
    """The graph inputs the output depends on that, followed through `plumbing` (input 0), reach
    only slots of LSTM/GRU nodes for which is_target(kind, slot) holds; one that reaches such a slot
    and anything else is refused."""
    consumers: Dict[str, list] = {}
    for node in index.nodes:
        for slot, name in enumerate(node.input):
            if name:
                consumers.setdefault(name, []).append((node, slot))
    found = []
    for name in index.free_inputs_needed_for(output_name):
        targets, other, seen, pending = [], [], {name}, [name]
        while pending:
            for node, slot in consumers.get(pending.pop(), ()):
                kind = KINDS.get(node.op_type)
                if kind is not None and is_target(kind, slot):
                    targets.append(node)
                elif node.op_type in plumbing and slot == 0:
                    for out in node.output:
                        if out and out not in seen:
                            seen.add(out)
                            pending.append(out)
                else:
                    other.append(node)
        if targets and other:
            raise refuse(other[0], f"it uses graph input '{name}', which is also {what} of "
                                   f"{describe(targets[0])}; {support}")
        if targets:
            found.append(name)
    return tuple(found)


def sequence_input(index: GraphIndex, output_name: str, states: Tuple[str, ...] = ()) -> onnx.ValueInfoProto:
    """The graph input carrying the sequence: of the inputs the output depends on, the one not
    used as an initial state (`states`) or a recurrent node's sequence_lens or peephole (those are
    refused later, by the node that reads them)."""
    needed = index.free_inputs_needed_for(output_name)
    side = {n.input[k] for n in index.nodes_needed_for(output_name) if n.op_type in SIDE_INPUT_SLOTS
            for k in SIDE_INPUT_SLOTS[n.op_type] if k < len(n.input)}
    candidates = [name for name in needed if name not in side and name not in states]
    if not candidates:
        raise UnsupportedModelError(f"'{index.path}': output '{output_name}' does not depend on a sequence input")
    if len(candidates) > 1:
        raise UnsupportedModelError(
            f"'{index.path}': output '{output_name}' depends on {len(candidates)} graph inputs "
            f"({', '.join(candidates)}); only one sequence input is supported")
    info = index.free_inputs[candidates[0]]
    tensor_type = info.type.tensor_type
    if tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise UnsupportedModelError(f"graph input '{info.name}' is not float32; only float32 inputs are supported")
    if tensor_type.HasField("shape") and len(tensor_type.shape.dim) != 3:
        raise UnsupportedModelError(f"graph input '{info.name}' has rank {len(tensor_type.shape.dim)}; expected "
                                    f"a rank-3 sequence [batch, time, feature] or [time, batch, feature]")
    return info


def _input_data(info: onnx.ValueInfoProto) -> Data:
    dims = info.type.tensor_type.shape.dim if info.type.tensor_type.HasField("shape") else [None] * 3
    sizes = [d.dim_value if d is not None and d.HasField("dim_value") and d.dim_value > 0 else None
             for d in dims]
    return Data(tuple(Axis(f"in{k}", size) for k, size in enumerate(sizes)))


def _walk(index: GraphIndex, ctx: ImportContext, input_info, output_name: str, states: Tuple[str, ...] = (),
          lens: Tuple[str, ...] = ()):
    values: Dict[str, object] = {name: _initializer(index, t) for name, t in index.initializers.items()}
    for name in index.free_inputs:
        values[name] = StateInput(name) if name in states else LensInput(name) if name in lens else Blocked(
            f"graph input '{name}' (only one input, the sequence, is supported, plus graph inputs that only "
            f"feed initial states or sequence_lens)")
    values[input_info.name] = _input_data(input_info)
    for node in index.nodes_needed_for(output_name):
        inputs = [_lookup(values, node, name) if name else None for name in node.input]
        results = evaluate(ctx, node, inputs)
        for name, value in zip(node.output, results):
            if name:
                values[name] = value
    return values[output_name]


def _initializer(index: GraphIndex, tensor: onnx.TensorProto) -> np.ndarray:
    try:
        return numpy_helper.to_array(tensor)
    except Exception as exc:  # raw data of the wrong length, unknown data type, ...
        raise ModelFormatError(f"'{index.path}': initializer '{tensor.name}' is unreadable: {first_line(exc)}") from None


def _lookup(values: dict, node, name: str):
    if name not in values:
        raise ModelFormatError(f"{describe(node)}: its input '{name}' is not computed by any earlier node, "
                               f"initializer or graph input")
    return values[name]


def evaluate(ctx: ImportContext, node: onnx.NodeProto, inputs: List[object]) -> list:
    """What `node` computes, given what is known of its inputs."""
    try:
        return _dispatch(ctx, node, inputs)
    except (IndexError, KeyError, TypeError, ValueError) as exc:
        # Missing inputs, out-of-range axes or indices: the node itself is malformed.
        raise ModelFormatError(f"{describe(node)}: malformed node ({type(exc).__name__}: {first_line(exc)})") from None


def _dispatch(ctx: ImportContext, node: onnx.NodeProto, inputs: List[object]) -> list:
    if node.domain not in DEFAULT_DOMAINS:
        raise refuse(node, f"operators of domain '{node.domain}' are not supported (standard ONNX only)")
    for value in inputs:
        if isinstance(value, Blocked):
            raise refuse(node, f"it uses {value.message}")
    if node.op_type in NOT_YET:
        raise refuse(node, f"{NOT_YET[node.op_type]} layers are not supported yet; only LSTM and GRU")
    states = [v for v in inputs if isinstance(v, StateInput)]
    if states and node.op_type not in RECURRENT_OPS:
        if node.op_type in STATE_PLUMBING and isinstance(inputs[0], StateInput) and not any(
                isinstance(v, (Data, StateStack, StateInput)) for v in inputs[1:]):
            return [inputs[0]] * len(node.output)
        raise refuse(node, f"it uses graph input '{states[0].name}', an initial state; {STATE_SUPPORT}")
    lens = [v for v in inputs if isinstance(v, LensInput)]
    if lens and node.op_type not in RECURRENT_OPS:
        if node.op_type in LENS_PLUMBING and isinstance(inputs[0], LensInput):
            return [inputs[0]] * len(node.output)
        raise refuse(node, f"it uses graph input '{lens[0].name}', the sequence lengths; {LENS_SUPPORT}")
    if any(isinstance(v, StateStack) for v in inputs):
        return stack_op(ctx, node, inputs)
    if node.op_type in RECURRENT_OPS:
        return RECURRENT_OPS[node.op_type](ctx, node, inputs)
    if any(isinstance(v, Data) for v in inputs):
        handler = DATA_OPS.get(node.op_type)
        if handler is None:
            raise refuse(node, f"this operator is not supported on the data path from the model input "
                               f"to the output; {DATA_PATH_SUPPORT}")
        return handler(ctx, node, inputs)
    if all(v is None or isinstance(v, np.ndarray) for v in inputs):
        return fold_constant_node(node, inputs, ctx.opset)
    return shape_op(node, inputs, ctx.opset)


# --- the result ----------------------------------------------------------------------------

def _assemble(path: Path, ctx: ImportContext, final, input_name: str, output_name: str) -> OnnxImport:
    if isinstance(final, Blocked):
        raise UnsupportedModelError(f"output '{output_name}' is {final.message}")
    if isinstance(final, StateStack):
        raise UnsupportedModelError(f"output '{output_name}' holds the final states of several layers stacked "
                                    f"together (PyTorch's h_n); {STACK_SUPPORT}")
    if not isinstance(final, Data) or not final.lstm:
        raise UnsupportedModelError(f"'{path}': output '{output_name}' is not computed by an LSTM or GRU from "
                                    f"the model input; the model must start with a recurrent layer")
    if final.part:
        raise UnsupportedModelError(f"output '{output_name}' is only the {final.part} direction of bidirectional "
                                    f"layer '{final.lstm[-1].name}'; only both directions, concatenated "
                                    f"[forward, backward], are supported")
    for axis in final.axes:
        if axis.label in ctx.merged:  # batch and time flattened by a Reshape and never split back
            raise ctx.merged[axis.label][1]
    input_layout = _input_layout(ctx, input_name)
    output_axes = tuple(ctx.roles.role(a.label) for a in final.axes)
    _check_output_axes(output_name, output_axes, final.last_step)
    notes = (f"graph input '{input_name}' is {input_layout.replace('_', '-')}",
             f"graph output '{output_name}' has axes [{', '.join(output_axes)}]") + _state_notes(ctx) \
        + _lens_notes(ctx)
    last_step = last_step_from(final) if final.last_step else "final_state"
    model = FloatModel(recurrent_layers=final.lstm, head=final.head, sequence_output=not final.last_step,
                       final_softmax=final.softmax, last_step_from=last_step, name=path.stem,
                       source=str(path), notes=notes)
    return OnnxImport(model, input_name, input_layout, output_name, output_axes)


def _state_notes(ctx: ImportContext) -> Tuple[str, ...]:
    """One note per graph input that holds initial states: which layers and NAME_state_t fields."""
    by_input: Dict[str, list] = {}
    for name, layer, kind, bidirectional in ctx.state_inputs:
        by_input.setdefault(name, []).append((layer, kind, bidirectional))
    notes = []
    for name, uses in by_input.items():
        kinds = sorted({kind for _, kind, _ in uses}, reverse=True)  # hidden before cell
        what = " and ".join(kinds)
        layers = sorted({layer for layer, _, _ in uses})
        fields = [f"{kind}_{layer}{part}" for layer, kind, bidirectional in uses
                  for part in (("f", "b") if bidirectional else ("",))]
        plural = len(layers) > 1 or len(fields) > 1
        where = (f"layers {', '.join(map(str, layers[:-1]))} and {layers[-1]}" if len(layers) > 1
                 else f"{'bidirectional ' if uses[0][2] else ''}layer {layers[0]}")
        shown = ", ".join(f"NAME_state_t.{f}" for f in fields)
        notes.append(f"graph input '{name}' {'holds' if plural else 'is'} the initial {what} "
                     f"state{'s' if plural else ''} of {where}: "
                     f"{'they map' if plural else 'it maps'} to {shown} (zero after NAME_reset)")
    return tuple(notes)


def _lens_notes(ctx: ImportContext) -> Tuple[str, ...]:
    """The note for a graph input of sequence lengths, after checking that running each sequence
    truncated to its length computes what the graph computes: every recurrent layer reads the
    lengths (a layer without them would run over the padding). Taking step T-1 of a Y with
    lengths (padding for a shorter sequence) is refused by take_last_step."""
    if not ctx.lens_inputs:
        return ()
    name = ctx.lens_inputs[0][0]
    with_lens = {layer for _, layer in ctx.lens_inputs}
    without = [k for k in range(ctx.lstm_count) if k not in with_lens]
    if without:
        raise UnsupportedModelError(
            f"graph input '{name}' gives the sequence_lens of some recurrent layers but not of layer "
            f"{without[0]}, which would run over the padding; every layer must "
            f"take the same sequence lengths")
    return (f"graph input '{name}' gives per-sequence lengths: run each sequence with NAME_run(..., steps=len) "
            f"(the float reference and the simulator take sequences of one length)",)


def _input_layout(ctx: ImportContext, input_name: str) -> str:
    roles = tuple(ctx.roles.role(f"in{k}") for k in range(3))
    if roles not in LAYOUTS:
        shown = ", ".join(r or "unused" for r in roles)
        raise UnsupportedModelError(f"graph input '{input_name}' has axes [{shown}]; supported are "
                                    f"[batch, time, feature] and [time, batch, feature]")
    return LAYOUTS[roles]


def _check_output_axes(output_name: str, axes: Tuple[str, ...], last_step: bool) -> None:
    """A raw bidirectional Y or Y_h keeps its num_directions axis ("direction"): the compiled
    model's features are then [forward, backward], i.e. that axis merged into the features."""
    meaningful = [a for a in axes if a != "unit"]
    # "batch" may be missing when the export fixed it at 1 and squeezed it away.
    allowed = [["batch", "feature"], ["feature"]] if last_step else [
        ["batch", "time", "feature"], ["time", "batch", "feature"], ["time", "feature"]]
    if meaningful.count("direction") == 1 and "feature" in meaningful \
            and meaningful.index("direction") < meaningful.index("feature"):
        meaningful.remove("direction")
    if meaningful not in allowed:
        raise UnsupportedModelError(f"graph output '{output_name}' has axes [{', '.join(axes)}]; supported are "
                                    f"[batch, time, feature], [time, batch, feature] and [batch, feature] "
                                    f"(plus size-1 axes, and the num_directions axis of a bidirectional layer)")


__all__ = ["OnnxImport", "load_onnx", "inspect_onnx", "graph_input_layout"]
