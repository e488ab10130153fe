"""Small ONNX LSTM and GRU models built with onnx.helper, for importer tests (no torch needed).

`build_case(Spec(...))` returns a Case: the model plus how its graph input and output are laid
out, so a test can feed onnxruntime (or onnx's ReferenceEvaluator) and compare the result
with lstm_edge.reference.forward. The graphs imitate what exporters write: PyTorch's legacy
exporter (Constant nodes, ConstantOfShape zero states, Squeeze between layers) and its dynamo
exporter (Expand zero states, Transpose + Shape arithmetic + Reshape between layers), including
the ways both merge the two directions of a bidirectional layer.

Output axes are written as letters: n batch, t time, f feature, 1 a size-1 axis, d the
num_directions axis of a bidirectional layer (its [forward, backward] merge into the features).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INT64_MAX = 2 ** 63 - 1
IR_VERSION = 8  # old enough for every onnxruntime that supports opset 17


@dataclass
class Case:
    model: onnx.ModelProto
    input_layout: str  # "batch_first" ([N, T, F]) or "time_major" ([T, N, F])
    output_axes: str  # e.g. "t1nf" for a raw layout-0 Y, "nf" for a last-step head
    features: int
    batch: int
    steps: int
    # onnxruntime refuses LSTM/GRU layout=1, so those models run on onnx.reference.ReferenceEvaluator.
    runner: str = "onnxruntime"


class GraphBuilder:
    """Appends nodes and initializers with unique names."""

    def __init__(self, opset: int = 17, seed: int = 0, constant_nodes: bool = False):
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.constant_nodes = constant_nodes  # constants as Constant nodes, like the legacy exporter
        self.nodes: List[onnx.NodeProto] = []
        self.initializers: List[onnx.TensorProto] = []
        self.inputs: List[onnx.ValueInfoProto] = []
        self.outputs: List[onnx.ValueInfoProto] = []
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, array, hint: str = "const") -> str:
        name = self.fresh(hint)
        tensor = numpy_helper.from_array(np.asarray(array), name)
        if self.constant_nodes:
            self.nodes.append(helper.make_node("Constant", [], [name], name=self.fresh("Constant"), value=tensor))
        else:
            self.initializers.append(tensor)
        return name

    def ints(self, values, hint: str = "ints") -> str:
        return self.const(np.array(values, dtype=np.int64), hint)

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, name: Optional[str] = None, **attrs):
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        node_name = self.fresh(op_type) if name is None else name
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name, **attrs))
        return outs[0] if n_out == 1 else outs

    def random(self, *shape, scale: float = 0.5) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def add_input(self, name: str, shape, elem_type=TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def add_output(self, value: str) -> str:
        self.outputs.append(helper.make_tensor_value_info(value, TensorProto.FLOAT, None))
        return value

    def squeeze(self, value: str, axes: Sequence[int]) -> str:
        if self.opset >= 13:
            return self.op("Squeeze", [value, self.ints(axes)])
        return self.op("Squeeze", [value], axes=list(axes))

    def unsqueeze(self, value: str, axes: Sequence[int]) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", [value, self.ints(axes)])
        return self.op("Unsqueeze", [value], axes=list(axes))

    def model(self, name: str = "case") -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, self.inputs, self.outputs, self.initializers)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                 ir_version=IR_VERSION, producer_name="lstm-edge tests")


def weight_scale(*sizes: int) -> float:
    """normal * 0.5, shrunk for wide layers so that gates are not all saturated."""
    return 0.5 / np.sqrt(max(1.0, max(sizes) / 8.0))


# --- LSTM and its zero states --------------------------------------------------------------

def zero_state(b: GraphBuilder, x: str, hidden: int, layout: int, kind: str, batch: int, dirs: int = 1) -> str:
    """initial_h/initial_c as the exporters build them; '' when absent."""
    batch_axis = 1 if layout == 0 else 0
    unit_then_batch = (lambda n: [b.ints([dirs]), n, b.ints([hidden])]) if layout == 0 else \
        (lambda n: [n, b.ints([dirs]), b.ints([hidden])])
    shape = [dirs, batch, hidden] if layout == 0 else [batch, dirs, hidden]
    if kind == "absent":
        return ""
    if kind in ("zeros", "nonzero"):
        value = np.zeros(shape, np.float32) if kind == "zeros" else np.full(shape, 0.1, np.float32)
        return b.const(value, "initial_state")
    if kind in ("constant_of_shape", "constant_of_shape_ones"):  # the legacy exporter's way
        n = b.unsqueeze(b.op("Gather", [b.op("Shape", [x]), b.const(np.array(batch_axis, np.int64))], axis=0), [0])
        fill = 0.0 if kind == "constant_of_shape" else 1.0
        return b.op("ConstantOfShape", [b.op("Concat", unit_then_batch(n), axis=0)],
                    value=numpy_helper.from_array(np.array([fill], np.float32)))
    if kind == "expand":  # the dynamo exporter's way (Shape start/end needs opset 15)
        n = b.op("Shape", [x], start=batch_axis, end=batch_axis + 1)
        zeros = b.op("Expand", [b.const(np.array(0.0, np.float32)), b.op("Concat", unit_then_batch(n), axis=0)])
        return b.op("Slice", [zeros, b.ints([0]), b.ints([dirs]), b.ints([0])])
    raise ValueError(kind)


GATES = {"LSTM": 4, "GRU": 3}


def lstm_weights(b: GraphBuilder, features: int, hidden: int, bias: bool, in_graph: bool, gates: int = 4,
                 dirs: int = 1):
    """W, R, B in ONNX layout; with `in_graph`, computed by nodes that an exporter without
    constant folding leaves behind (Transpose, Unsqueeze, Mul, Concat)."""
    scale = weight_scale(features, hidden)
    w = b.random(dirs, gates * hidden, features, scale=scale)
    r = b.random(dirs, gates * hidden, hidden, scale=scale)
    bias_value = b.random(dirs, 2 * gates * hidden, scale=0.3) if bias else None
    if not in_graph:
        return b.const(w, "W"), b.const(r, "R"), (b.const(bias_value, "B") if bias else "")
    parts = [b.unsqueeze(b.op("Transpose", [b.const(w[d].T.copy(), "W_t")], perm=[1, 0]), [0]) for d in range(dirs)]
    w_name = parts[0] if dirs == 1 else b.op("Concat", parts, axis=0)
    r_name = b.op("Mul", [b.const(r / 2, "R_half"), b.const(np.array(2.0, np.float32))])
    b_name = ""
    if bias:
        split = gates * hidden
        b_name = b.op("Concat", [b.const(bias_value[:, :split], "Wb"), b.const(bias_value[:, split:], "Rb")], axis=1)
    return w_name, r_name, b_name


def add_lstm(b: GraphBuilder, x: str, features: int, hidden: int, *, reverse=False, layout=0, bias=True,
             state="absent", batch=3, in_graph=False, name=None, op_type="LSTM", bidirectional=False,
             linear_before_reset=1) -> Tuple[str, str]:
    """One LSTM or GRU node; returns (Y, Y_h)."""
    dirs = 2 if bidirectional else 1
    w, r, bias_name = lstm_weights(b, features, hidden, bias, in_graph, GATES[op_type], dirs)
    init = zero_state(b, x, hidden, layout, state, batch, dirs)
    direction = "bidirectional" if bidirectional else "reverse" if reverse else "forward"
    attrs = dict(hidden_size=hidden, direction=direction)
    if layout:
        attrs["layout"] = 1
    if op_type == "GRU":
        attrs["linear_before_reset"] = linear_before_reset
        inputs = [x, w, r, bias_name, "", init]
    else:
        inputs = [x, w, r, bias_name, "", init, init]
    while inputs and not inputs[-1]:
        inputs.pop()
    outs = b.op(op_type, inputs, n_out=3 if op_type == "LSTM" else 2, name=name, **attrs)
    return outs[0], outs[1]


# --- whole models --------------------------------------------------------------------------

@dataclass
class Spec:
    features: int = 4
    hidden: Sequence[int] = (8,)
    reverse: Sequence[bool] = ()  # per layer; default all forward
    bidirectional: Sequence[bool] = ()  # per layer; default none
    cell: Sequence[str] = ()  # per layer, "LSTM" or "GRU"; default all LSTM
    linear_before_reset: int = 1  # of the GRU nodes
    # How a bidirectional layer's Y [T, 2, N, H] (layout 0) becomes [T, N, 2H], between layers and
    # before the head: legacy (Transpose + Reshape [0, 0, -1]), dynamo (Transpose + Reshape to
    # sizes computed from Shape), gather_concat / slice_concat (each direction, then Concat), or
    # sum (Gather each direction, then Add: a sum merge).
    layout: int = 0  # the LSTM nodes' layout attribute
    batch_first: bool = False  # graph input [N, T, F] (a Transpose feeds layout-0 LSTMs)
    bias: bool = True
    state: str = "absent"  # see zero_state
    link: str = "squeeze"  # between stacked layers: squeeze | reshape | dynamo
    merge: str = "legacy"
    # sequence | raw_y | gather | gather_last | slice | slice_last | y_h | y_h_squeezed | y_h_gather
    # | y_h_merged / y_h_flatten (bidirectional Y_h: Transpose + Reshape or Flatten to [N, 2H])
    # | y_h_concat (h_n[-2], h_n[-1] concatenated)
    # | h_n_gather / h_n_slice (PyTorch's h_n: all layers' Y_h concatenated, then h_n[-1], or
    #   h_n[-2] and h_n[-1] concatenated after a bidirectional layer; by Gather or by Slice + Squeeze)
    select: str = "sequence"
    head: Sequence[Tuple[str, int, Optional[str]]] = ()  # (gemm | gemm_t0 | matmul, units, activation)
    softmax: Optional[str] = None  # Softmax | LogSoftmax
    in_graph_weights: bool = False
    steps: int = 7
    batch: int = 3
    seed: int = 0
    opset: int = 17
    constant_nodes: bool = False
    static_shape: bool = False  # fixed batch/time in the graph input's declared shape
    names: dict = field(default_factory=dict)  # node names, by role ("lstm0", "dense0", ...)


def _transpose_to(b: GraphBuilder, value: str, axes: str, wanted: str) -> Tuple[str, str]:
    if axes == wanted:
        return value, axes
    perm = [axes.index(c) for c in wanted]
    return b.op("Transpose", [value], perm=perm), wanted


def _dynamo_reshape(b: GraphBuilder, moved: str) -> str:
    """Reshape [A, B, C, D] to [A, B, C*D], the sizes read by Shape (the dynamo exporter's way)."""
    shape = b.op("Shape", [moved])
    part = lambda lo, hi: b.op("Slice", [shape, b.ints([lo]), b.ints([hi])])  # noqa: E731
    merged = b.op("Mul", [part(2, 3), part(3, 4)])
    target = b.op("Concat", [part(0, 1), part(1, 2), b.op("Reshape", [merged, b.ints([-1])])], axis=0)
    return b.op("Reshape", [moved, target])


def _merge_directions(b: GraphBuilder, y: str, axes: str, spec: Spec) -> Tuple[str, str]:
    """From a bidirectional Y (tdnf or ntdf) to [T, N, 2H] / [N, T, 2H] (or [.., H] for sum)."""
    d = axes.index("d")
    if spec.merge in ("legacy", "dynamo"):
        if axes == "tdnf":
            y, axes = b.op("Transpose", [y], perm=[0, 2, 1, 3]), "tndf"
        if spec.merge == "legacy":
            return b.op("Reshape", [y, b.ints([0, 0, -1])]), axes.replace("d", "")
        return _dynamo_reshape(b, y), axes.replace("d", "")
    if spec.merge == "gather_concat":
        halves = [b.op("Gather", [y, b.const(np.array(k, np.int64))], axis=d) for k in (0, -1)]
        return b.op("Concat", halves, axis=-1), axes.replace("d", "")
    if spec.merge == "slice_concat":
        halves = [b.op("Slice", [y, b.ints([lo]), b.ints([lo + 1]), b.ints([d])]) for lo in (0, 1)]
        joined = b.op("Concat", halves, axis=-1)
        return b.squeeze(joined, [d]), axes.replace("d", "")
    if spec.merge == "sum":
        halves = [b.op("Gather", [y, b.const(np.array(k, np.int64))], axis=d) for k in (0, 1)]
        return b.op("Add", halves), axes.replace("d", "")
    raise ValueError(spec.merge)


def _link(b: GraphBuilder, y: str, axes: str, spec: Spec, hidden: int) -> Tuple[str, str]:
    """From a raw Y (t1nf or nt1f, tdnf or ntdf) to the next layer's [T, N, H] / [N, T, H]."""
    if "d" in axes:
        return _merge_directions(b, y, axes, spec)
    unit = axes.index("1")
    if spec.link == "squeeze":
        return b.squeeze(y, [unit]), axes.replace("1", "")
    if spec.link == "reshape":  # 0 copies a size; -1 absorbs the unit axis
        target = [0, -1, hidden] if axes == "t1nf" else [0, 0, hidden]
        return b.op("Reshape", [y, b.ints(target)]), axes.replace("1", "")
    if spec.link == "dynamo" and axes == "t1nf":  # Transpose then Reshape to sizes read by Shape
        return _dynamo_reshape(b, b.op("Transpose", [y], perm=[0, 2, 1, 3])), "tnf"
    raise ValueError(spec.link)


def _select_y_h(b: GraphBuilder, y_h: str, spec: Spec) -> Tuple[str, str]:
    """A bidirectional layer's final states [2, N, H] / [N, 2, H], merged to [N, 2H] or not."""
    h_axes = "dnf" if spec.layout == 0 else "ndf"
    d = h_axes.index("d")
    if spec.select == "y_h":
        return y_h, h_axes
    if spec.select == "y_h_merged":  # h_n.transpose(0, 1).reshape(N, -1)
        if spec.layout == 0:
            y_h = b.op("Transpose", [y_h], perm=[1, 0, 2])
        return b.op("Reshape", [y_h, b.ints([0, -1])]), "nf"
    if spec.select == "y_h_flatten":  # h_n.transpose(0, 1).flatten(1)
        if spec.layout == 0:
            y_h = b.op("Transpose", [y_h], perm=[1, 0, 2])
        return b.op("Flatten", [y_h], axis=1), "nf"
    if spec.select == "y_h_concat":  # torch.cat([h_n[-2], h_n[-1]], -1)
        halves = [b.op("Gather", [y_h, b.const(np.array(k, np.int64))], axis=d) for k in (-2, -1)]
        return b.op("Concat", halves, axis=-1), "nf"
    raise ValueError(f"{spec.select} of a bidirectional layer")


def _select_h_n(b: GraphBuilder, y_hs: Sequence[str], bidirectional: bool, spec: Spec) -> Tuple[str, str]:
    """PyTorch's h_n [layers * directions, N, H] as its exporters build it, and its last entries."""
    axis = 0 if spec.layout == 0 else 1
    h_n = b.op("Concat", list(y_hs), axis=axis)
    picks = (-2, -1) if bidirectional else (-1,)
    if spec.select == "h_n_gather":
        entries = [b.op("Gather", [h_n, b.const(np.array(k, np.int64))], axis=axis) for k in picks]
    else:
        entries = [b.squeeze(b.op("Slice", [h_n, b.ints([k]), b.ints([k + 1 if k < -1 else INT64_MAX]),
                                            b.ints([axis])]), [axis]) for k in picks]
    return (b.op("Concat", entries, axis=-1) if bidirectional else entries[0]), "nf"


def _select(b: GraphBuilder, y: str, y_h: str, axes: str, spec: Spec, reverse: bool) -> Tuple[str, str]:
    """The output of the last LSTM the head reads: the sequence, or its last step."""
    h_axes = "1nf" if spec.layout == 0 else "n1f"
    if "d" in axes and spec.select.startswith("y_h"):
        return _select_y_h(b, y_h, spec)
    if spec.select == "y_h":
        return y_h, h_axes
    if spec.select == "y_h_squeezed":
        return b.squeeze(y_h, [h_axes.index("1")]), "nf"
    if spec.select == "y_h_gather":  # PyTorch's h_n[-1]
        return b.op("Gather", [y_h, b.const(np.array(-1, np.int64))], axis=h_axes.index("1")), "nf"
    if spec.select == "raw_y":
        return y, axes
    if "d" in axes:
        seq, seq_axes = _merge_directions(b, y, axes, spec)
    else:
        seq, seq_axes = b.squeeze(y, [axes.index("1")]), axes.replace("1", "")
    if spec.batch_first:
        seq, seq_axes = _transpose_to(b, seq, seq_axes, "ntf")
    t = seq_axes.index("t")
    if spec.select == "sequence":
        return seq, seq_axes
    if spec.select in ("gather", "gather_last"):  # "gather": a reverse layer's final state, at step 0
        index = b.const(np.array(0 if reverse and spec.select == "gather" else -1, np.int64))
        return b.op("Gather", [seq, index], axis=t), seq_axes.replace("t", "")
    if spec.select in ("slice", "slice_last"):
        start, end = (0, 1) if reverse and spec.select == "slice" else (-1, INT64_MAX)
        sliced = b.op("Slice", [seq, b.ints([start]), b.ints([end]), b.ints([t])])
        return sliced, seq_axes.replace("t", "1")
    raise ValueError(spec.select)


def _dense(b: GraphBuilder, x: str, axes: str, kind: str, width: int, units: int, k: int, spec: Spec) -> str:
    scale = weight_scale(width, units) * 2
    w, bias = b.random(units, width, scale=scale), b.random(units, scale=0.3)
    name = spec.names.get(f"dense{k}")
    if kind == "gemm":
        return b.op("Gemm", [x, b.const(w, "fc_weight"), b.const(bias, "fc_bias")], name=name, transB=1)
    if kind == "gemm_t0":  # B stored [in, out], with alpha and beta to undo
        alpha, beta = 0.7, 1.3
        return b.op("Gemm", [x, b.const(w.T / alpha, "fc_B"), b.const((bias / beta)[None, :], "fc_C")],
                    name=name, alpha=alpha, beta=beta)
    if kind == "matmul":  # PyTorch Linear on 3-D input: MatMul then Add(bias, .)
        weight = b.const(w.T.copy(), "fc_weight_t")
        if spec.in_graph_weights:
            weight = b.op("Transpose", [b.const(w, "fc_weight")], perm=[1, 0])
        product = b.op("MatMul", [x, weight], name=name)
        return b.op("Add", [b.const(bias, "fc_bias"), product])
    raise ValueError(kind)


def build_case(spec: Spec, name: str = "case") -> Case:
    b = GraphBuilder(spec.opset, spec.seed, spec.constant_nodes)
    dims = ("batch", "time") if not spec.static_shape else (spec.batch, spec.steps)
    if spec.batch_first:
        x, axes = b.add_input("x", [dims[0], dims[1], spec.features]), "ntf"
    else:
        x, axes = b.add_input("x", [dims[1], dims[0], spec.features]), "tnf"
    layers = len(spec.hidden)
    reverse = list(spec.reverse) or [False] * layers
    bidirectional = list(spec.bidirectional) or [False] * layers
    cells = list(spec.cell) or ["LSTM"] * layers
    width, y, y_hs = spec.features, x, []
    for k, hidden in enumerate(spec.hidden):
        y, axes = _transpose_to(b, y, axes, "tnf" if spec.layout == 0 else "ntf")
        prefix = cells[k].lower()
        y, y_h = add_lstm(b, y, width, hidden, reverse=reverse[k], layout=spec.layout, bias=spec.bias,
                          state=spec.state, batch=spec.batch, in_graph=spec.in_graph_weights,
                          name=spec.names.get(f"{prefix}{k}", f"{prefix}_{k}"), op_type=cells[k],
                          bidirectional=bidirectional[k], linear_before_reset=spec.linear_before_reset)
        y_hs.append(y_h)
        unit = "d" if bidirectional[k] else "1"
        axes = ("t" + unit + "nf") if spec.layout == 0 else ("nt" + unit + "f")
        width = 2 * hidden if bidirectional[k] and spec.merge != "sum" else hidden
        if k + 1 < len(spec.hidden):
            y, axes = _link(b, y, axes, spec, hidden)
    if spec.select.startswith("h_n"):
        out, axes = _select_h_n(b, y_hs, bidirectional[-1], spec)
    else:
        out, axes = _select(b, y, y_h, axes, spec, reverse[-1])
    if spec.select.startswith(("y_h", "h_n")) and bidirectional[-1]:
        width = 2 * spec.hidden[-1]
    for k, (kind, units, activation) in enumerate(spec.head):
        if kind.startswith("gemm") and "1" in axes:  # Gemm takes [batch, features] only
            out, axes = b.squeeze(out, [axes.index("1")]), axes.replace("1", "")
        out = _dense(b, out, axes, kind, width, units, k, spec)
        width = units
        if activation:
            out = b.op(activation, [out])
    if spec.softmax:
        out = b.op(spec.softmax, [out], axis=-1)
    b.add_output(out)
    return Case(b.model(name), "batch_first" if spec.batch_first else "time_major", axes, spec.features,
                spec.batch, spec.steps, "onnxruntime" if spec.layout == 0 else "reference_evaluator")


# --- odd nodes for error tests -------------------------------------------------------------

def find_node(model: onnx.ModelProto, op_type: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == op_type)


def set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(name, value)])


def set_input(model: onnx.ModelProto, node: onnx.NodeProto, slot: int, array: np.ndarray, hint: str) -> None:
    """Put a new initializer in input `slot` of `node` (padding skipped slots with '')."""
    name = f"{hint}_injected"
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
    while len(node.input) <= slot:
        node.input.append("")
    node.input[slot] = name


def recurrent_case(op_type: str, name: str = "recurrent") -> onnx.ModelProto:
    """A lone GRU or RNN node (gates: 3 for GRU, 1 for RNN)."""
    b = GraphBuilder()
    gates = {"GRU": 3, "RNN": 1}[op_type]
    x = b.add_input("x", ["time", "batch", 4])
    w, r = b.const(b.random(1, gates * 6, 4)), b.const(b.random(1, gates * 6, 6))
    y = b.op(op_type, [x, w, r], name=name, hidden_size=6)
    b.add_output(y)
    return b.model("recurrent")


def model_input(case: Case, x_batch_first: np.ndarray) -> np.ndarray:
    """The batch-first test input in the layout the graph input expects."""
    return x_batch_first if case.input_layout == "batch_first" else np.ascontiguousarray(
        x_batch_first.transpose(1, 0, 2))


def to_reference_layout(y: np.ndarray, axes: str) -> np.ndarray:
    """A graph output with axes `axes` rearranged as reference.forward returns it: [N, T, O] or [N, O].
    A num_directions axis (d) merges into the features: [forward, backward]."""
    units = tuple(k for k, c in enumerate(axes) if c == "1")
    y, axes = np.squeeze(y, axis=units), axes.replace("1", "")
    wanted = "nt" if "t" in axes else "n"
    wanted += "df" if "d" in axes else "f"
    y = np.transpose(y, [axes.index(c) for c in wanted])
    return y.reshape(y.shape[:len(wanted) - 2] + (-1,)) if "d" in axes else y


def append_node(model: onnx.ModelProto, op_type: str, extra_inputs: Sequence[np.ndarray] = (),
                name: Optional[str] = None, domain: str = "", **attrs) -> onnx.NodeProto:
    """Apply a new node to the graph's (first) output and make its result the output."""
    source = model.graph.output[0].name
    inputs = [source]
    for k, array in enumerate(extra_inputs):
        inputs.append(f"{op_type}_operand_{k}")
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(array), inputs[-1]))
    node = helper.make_node(op_type, inputs, [f"{op_type}_out"], name=name or f"appended_{op_type}",
                            domain=domain or None, **attrs)
    model.graph.node.append(node)
    if domain:
        model.opset_import.append(helper.make_opsetid(domain, 1))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None))
    return node


def dense_before_lstm_case() -> onnx.ModelProto:
    """MatMul on the raw input, then an LSTM: the IR has no dense layer before LSTMs."""
    b = GraphBuilder()
    x = b.add_input("x", ["time", "batch", 4])
    projected = b.op("MatMul", [x, b.const(b.random(4, 6))], name="input_projection")
    y, _ = add_lstm(b, projected, 6, 5, name="lstm_after_dense")
    b.add_output(y)
    return b.model("dense_first")


def rank2_input_case() -> onnx.ModelProto:
    b = GraphBuilder()
    x = b.add_input("x", ["batch", 4])
    y, _ = add_lstm(b, b.unsqueeze(x, [0]), 4, 5, name="lstm_on_rank2")
    b.add_output(y)
    return b.model("rank2")


def bidirectional_case(tail: str, op_type: str = "LSTM") -> onnx.ModelProto:
    """A bidirectional layer (layout 0, hidden 5) whose outputs are used in a way the importer
    refuses; `tail` names the way."""
    b = GraphBuilder()
    x = b.add_input("x", ["time", "batch", 4])
    y, y_h = add_lstm(b, x, 4, 5, bidirectional=True, op_type=op_type, name="bi_0")
    index = lambda k: b.const(np.array(k, np.int64))  # noqa: E731
    if tail == "backward_only_into_head":  # h_n[-1] of a bidirectional layer
        out = b.op("Gemm", [b.op("Gather", [y_h, index(-1)], axis=0), b.const(b.random(3, 5))], name="fc", transB=1)
    elif tail == "forward_only_output":
        out = b.op("Gather", [y_h, index(0)], axis=0, name="forward_state")
    elif tail == "step0_of_merged_sequence":
        merged = b.op("Reshape", [b.op("Transpose", [y], perm=[0, 2, 1, 3]), b.ints([0, 0, -1])])
        out = b.op("Gather", [merged, index(0)], axis=0, name="first_step")
    elif tail == "concat_backward_first":
        out = b.op("Concat", [b.op("Gather", [y_h, index(1)], axis=0), b.op("Gather", [y_h, index(0)], axis=0)],
                   axis=-1, name="swapped")
    elif tail == "concat_along_batch":
        out = b.op("Concat", [b.op("Gather", [y_h, index(0)], axis=0), b.op("Gather", [y_h, index(1)], axis=0)],
                   axis=0, name="stacked")
    elif tail == "dense_on_unmerged_directions":
        moved = b.op("Transpose", [y], perm=[0, 2, 1, 3])
        out = b.op("MatMul", [moved, b.const(b.random(5, 3))], name="per_direction_fc")
    elif tail == "reshape_without_transpose":
        out = b.op("Reshape", [y, b.ints([0, 0, -1])], name="wrong_merge")
    elif tail == "sum_of_final_states":
        out = b.op("Add", [b.op("Gather", [y_h, index(0)], axis=0), b.op("Gather", [y_h, index(1)], axis=0)],
                   name="state_sum")
    elif tail == "mul_merge":  # Keras merge_mode="mul"
        out = b.op("Mul", [b.op("Gather", [y, index(0)], axis=1), b.op("Gather", [y, index(1)], axis=1)],
                   name="product")
    elif tail == "recurrent_on_one_direction":
        forward = b.op("Gather", [y, index(0)], axis=1)
        out, _ = add_lstm(b, forward, 5, 3, name="after_forward_only")
    else:
        raise ValueError(tail)
    b.add_output(out)
    return b.model(tail)


def h_n_case(tail: str) -> onnx.ModelProto:
    """Two stacked LSTM layers whose Y_h are concatenated like PyTorch's h_n, then used in a way
    the importer refuses; `tail` names the way."""
    b = GraphBuilder()
    x = b.add_input("x", ["time", "batch", 4])
    y, first = add_lstm(b, x, 4, 5, name="lstm_0")
    second_width = 3 if tail == "different_widths" else 5
    _, second = add_lstm(b, b.squeeze(y, [1]), 5, second_width, name="lstm_1")
    h_n = b.op("Concat", [first, second], axis=0, name="h_n")
    if tail in ("output", "different_widths"):
        out = h_n
    elif tail == "gemm_on_all_layers":
        out = b.op("Gemm", [h_n, b.const(b.random(3, 5))], name="fc", transB=1)
    elif tail == "slice_two_entries":
        out = b.op("Slice", [h_n, b.ints([-2]), b.ints([INT64_MAX]), b.ints([0])], name="last_two")
    else:
        raise ValueError(tail)
    b.add_output(out)
    return b.model(tail)


# --- streaming exports: initial states as graph inputs -------------------------------------

STATE_CASES = ("lstm", "lstm_batch_first", "lstm_layout1", "lstm_layout1_transpose", "stacked", "gru",
               "bidirectional", "state_on_data_path")


@dataclass
class StateCase:
    case: Case
    states: dict  # graph input name -> shape with the batch size filled in
    output: str  # the graph output to import (the sequence)


def state_input_case(kind: str, features: int = 4, hidden: int = 5, batch: int = 3, steps: int = 6,
                     seed: int = 0) -> StateCase:
    """What PyTorch writes for forward(x, h0, c0) -> (y, h_n, c_n): the recurrent state enters as
    graph inputs ([layers * directions, N, H], or [N, D, H] for layout=1) and leaves as outputs.
    "stacked": two layers taking h0[0:1] / h0[1:2] (Slice) and c0[0] / c0[1] (Gather + Unsqueeze);
    "state_on_data_path": h0 also added to the LSTM's output (refused)."""
    b = GraphBuilder(seed=seed)
    op = "GRU" if kind == "gru" else "LSTM"
    layers = 2 if kind == "stacked" else 1
    dirs = 2 if kind == "bidirectional" else 1
    layout = 1 if kind.startswith("lstm_layout1") else 0
    batch_first = kind in ("lstm_batch_first", "lstm_layout1")
    x = b.add_input("x", ["batch", "time", features] if batch_first else ["time", "batch", features])
    state_shape = ["batch", dirs, hidden] if layout else [layers * dirs, "batch", hidden]
    states = {"h0": state_shape} if op == "GRU" else {"h0": state_shape, "c0": state_shape}
    for name, shape in states.items():
        b.add_input(name, shape)
    seq = x
    if batch_first != bool(layout):  # [N, T, F] into a layout-0 node, or [T, N, F] into a layout-1 node
        seq = b.op("Transpose", [x], perm=[1, 0, 2])
    width, y_hs, y_cs = features, [], []
    for k in range(layers):
        w, r, bias = lstm_weights(b, width, hidden, True, False, GATES[op], dirs)
        if kind == "stacked":
            h = b.op("Slice", [list(states)[0], b.ints([k]), b.ints([k + 1]), b.ints([0])])
            c = b.unsqueeze(b.op("Gather", [list(states)[1], b.const(np.array(k, np.int64))], axis=0), [0])
        else:
            h, c = "h0", "c0"
        attrs = dict(hidden_size=hidden, direction="bidirectional" if dirs == 2 else "forward")
        if layout:
            attrs["layout"] = 1
        if op == "GRU":
            attrs["linear_before_reset"] = 1
            y, y_h = b.op(op, [seq, w, r, bias, "", h], n_out=2, name=f"gru_{k}", **attrs)
        else:
            y, y_h, y_c = b.op(op, [seq, w, r, bias, "", h, c], n_out=3, name=f"lstm_{k}", **attrs)
            y_cs.append(y_c)
        y_hs.append(y_h)
        if dirs == 2:  # [T, 2, N, H] -> [T, N, 2H], as the legacy exporter merges directions
            seq = b.op("Reshape", [b.op("Transpose", [y], perm=[0, 2, 1, 3]), b.ints([0, 0, -1])])
        else:
            seq = b.squeeze(y, [2 if layout else 1])
        width = dirs * hidden
    if kind == "state_on_data_path":
        seq = b.op("Add", [seq, "h0"], name="add_state")
    axes = "ntf" if layout else "tnf"
    outputs = {"y": seq, "h_n": y_hs[0] if layers == 1 else b.op("Concat", y_hs, axis=0)}
    if y_cs:
        outputs["c_n"] = y_cs[0] if layers == 1 else b.op("Concat", y_cs, axis=0)
    for name, value in outputs.items():
        b.nodes.append(helper.make_node("Identity", [value], [name], name=f"output_{name}"))
        b.add_output(name)
    filled = {name: [batch if d == "batch" else d for d in shape] for name, shape in states.items()}
    case = Case(b.model(kind), "batch_first" if batch_first else "time_major", axes, features, batch, steps,
                "onnxruntime" if layout == 0 else "reference_evaluator")
    return StateCase(case, filled, "y")


# --- sequence_lens: per-sequence lengths of a padded batch ---------------------------------

def with_lens_input(model: onnx.ModelProto, via: str = "direct", layers: Optional[Sequence[int]] = None) -> str:
    """Feed a new graph input 'lens' (int32 [batch]; int64 for via="cast") to sequence_lens of the
    recurrent nodes (all, or the k-th ones in `layers`): directly, through Identity, or through
    Cast to int32. Returns the name of the graph input."""
    elem = TensorProto.INT64 if via == "cast" else TensorProto.INT32
    model.graph.input.append(helper.make_tensor_value_info("lens", elem, ["batch"]))
    source = "lens"
    if via in ("identity", "cast"):
        source = "lens_int32"
        attrs = {"to": TensorProto.INT32} if via == "cast" else {}
        model.graph.node.insert(0, helper.make_node("Cast" if via == "cast" else "Identity", ["lens"], [source],
                                                    name=f"lens_{via}", **attrs))
    recurrent = [n for n in model.graph.node if n.op_type in ("LSTM", "GRU")]
    for k, node in enumerate(recurrent):
        if layers is not None and k not in layers:
            continue
        while len(node.input) <= 4:
            node.input.append("")
        node.input[4] = source
    return "lens"


def lens_on_data_path(model: onnx.ModelProto) -> None:
    """with_lens_input, plus the lengths (cast to float) added to the output: refused."""
    with_lens_input(model)
    out = model.graph.output[0].name
    model.graph.node.extend([
        helper.make_node("Cast", ["lens"], ["lens_float"], name="lens_float", to=TensorProto.FLOAT),
        helper.make_node("Add", [out, "lens_float"], ["plus_lens"], name="add_lens")])
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("plus_lens", TensorProto.FLOAT, None))
