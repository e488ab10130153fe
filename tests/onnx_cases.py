"""Small ONNX LSTM models built with onnx.helper, for importer tests (no torch needed).

`build_case(Spec(...))` returns a Case: the model plus how its graph input and output are laid
out, so a test can feed onnxruntime (or onnx's ReferenceEvaluator) and compare the result
with lstm_edge.reference.forward. The graphs imitate what exporters write: PyTorch's legacy
exporter (Constant nodes, ConstantOfShape zero states, Squeeze between layers) and its dynamo
exporter (Expand zero states, Transpose + Shape arithmetic + Reshape between layers).

Output axes are written as letters: n batch, t time, f feature, 1 a size-1 axis.
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
    # onnxruntime refuses LSTM layout=1, so those models run on onnx.reference.ReferenceEvaluator.
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

def zero_state(b: GraphBuilder, x: str, hidden: int, layout: int, kind: str, batch: int) -> str:
    """initial_h/initial_c as the exporters build them; '' when absent."""
    batch_axis = 1 if layout == 0 else 0
    unit_then_batch = (lambda n: [b.ints([1]), n, b.ints([hidden])]) if layout == 0 else \
        (lambda n: [n, b.ints([1]), b.ints([hidden])])
    shape = [1, batch, hidden] if layout == 0 else [batch, 1, hidden]
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
        return b.op("Slice", [zeros, b.ints([0]), b.ints([1]), b.ints([0])])
    raise ValueError(kind)


def lstm_weights(b: GraphBuilder, features: int, hidden: int, bias: bool, in_graph: bool):
    """W, R, B in ONNX layout; with `in_graph`, computed by nodes that an exporter without
    constant folding leaves behind (Transpose, Unsqueeze, Mul, Concat)."""
    scale = weight_scale(features, hidden)
    w, r = b.random(1, 4 * hidden, features, scale=scale), b.random(1, 4 * hidden, hidden, scale=scale)
    bias_value = b.random(1, 8 * hidden, scale=0.3) if bias else None
    if not in_graph:
        return b.const(w, "W"), b.const(r, "R"), (b.const(bias_value, "B") if bias else "")
    w_name = b.unsqueeze(b.op("Transpose", [b.const(w[0].T.copy(), "W_t")], perm=[1, 0]), [0])
    r_name = b.op("Mul", [b.const(r / 2, "R_half"), b.const(np.array(2.0, np.float32))])
    b_name = ""
    if bias:
        b_name = b.op("Concat", [b.const(bias_value[:, :4 * hidden], "Wb"), b.const(bias_value[:, 4 * hidden:], "Rb")],
                      axis=1)
    return w_name, r_name, b_name


def add_lstm(b: GraphBuilder, x: str, features: int, hidden: int, *, reverse=False, layout=0, bias=True,
             state="absent", batch=3, in_graph=False, name=None) -> Tuple[str, str]:
    """One LSTM node; returns (Y, Y_h)."""
    w, r, bias_name = lstm_weights(b, features, hidden, bias, in_graph)
    init = zero_state(b, x, hidden, layout, state, batch)
    attrs = dict(hidden_size=hidden, direction="reverse" if reverse else "forward")
    if layout:
        attrs["layout"] = 1
    inputs = [x, w, r, bias_name, "", init, init]
    while inputs and not inputs[-1]:
        inputs.pop()
    y, y_h, _ = b.op("LSTM", inputs, n_out=3, name=name, **attrs)
    return y, y_h


# --- whole models --------------------------------------------------------------------------

@dataclass
class Spec:
    features: int = 4
    hidden: Sequence[int] = (8,)
    reverse: Sequence[bool] = ()  # per layer; default all forward
    layout: int = 0  # the LSTM nodes' layout attribute
    batch_first: bool = False  # graph input [N, T, F] (a Transpose feeds layout-0 LSTMs)
    bias: bool = True
    state: str = "absent"  # see zero_state
    link: str = "squeeze"  # between stacked layers: squeeze | reshape | dynamo
    select: str = "sequence"  # sequence | raw_y | gather | slice | y_h | y_h_squeezed | y_h_gather
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


def _link(b: GraphBuilder, y: str, axes: str, spec: Spec, hidden: int) -> Tuple[str, str]:
    """From a raw Y (t1nf or nt1f) to the next layer's [T, N, H] / [N, T, H]."""
    unit = axes.index("1")
    if spec.link == "squeeze":
        return b.squeeze(y, [unit]), axes.replace("1", "")
    if spec.link == "reshape":  # 0 copies a size; -1 absorbs the unit axis
        target = [0, -1, hidden] if axes == "t1nf" else [0, 0, hidden]
        return b.op("Reshape", [y, b.ints(target)]), axes.replace("1", "")
    if spec.link == "dynamo" and axes == "t1nf":  # Transpose then Reshape to sizes read by Shape
        moved = b.op("Transpose", [y], perm=[0, 2, 1, 3])
        shape = b.op("Shape", [moved])
        part = lambda lo, hi: b.op("Slice", [shape, b.ints([lo]), b.ints([hi])])  # noqa: E731
        merged = b.op("Mul", [part(2, 3), part(3, 4)])
        target = b.op("Concat", [part(0, 1), part(1, 2), b.op("Reshape", [merged, b.ints([-1])])], axis=0)
        return b.op("Reshape", [moved, target]), "tnf"
    raise ValueError(spec.link)


def _select(b: GraphBuilder, y: str, y_h: str, axes: str, spec: Spec, reverse: bool) -> Tuple[str, str]:
    """The output of the last LSTM the head reads: the sequence, or its last step."""
    h_axes = "1nf" if spec.layout == 0 else "n1f"
    if spec.select == "y_h":
        return y_h, h_axes
    if spec.select == "y_h_squeezed":
        return b.squeeze(y_h, [h_axes.index("1")]), "nf"
    if spec.select == "y_h_gather":  # PyTorch's h_n[-1]
        return b.op("Gather", [y_h, b.const(np.array(-1, np.int64))], axis=h_axes.index("1")), "nf"
    if spec.select == "raw_y":
        return y, axes
    seq, seq_axes = b.squeeze(y, [axes.index("1")]), axes.replace("1", "")
    if spec.batch_first:
        seq, seq_axes = _transpose_to(b, seq, seq_axes, "ntf")
    t = seq_axes.index("t")
    if spec.select == "sequence":
        return seq, seq_axes
    if spec.select == "gather":  # a reverse layer's final state is at step 0
        index = b.const(np.array(0 if reverse else -1, np.int64))
        return b.op("Gather", [seq, index], axis=t), seq_axes.replace("t", "")
    if spec.select == "slice":
        start, end = (0, 1) if reverse else (-1, INT64_MAX)
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
    reverse = list(spec.reverse) or [False] * len(spec.hidden)
    width, y = spec.features, x
    for k, hidden in enumerate(spec.hidden):
        y, axes = _transpose_to(b, y, axes, "tnf" if spec.layout == 0 else "ntf")
        y, y_h = add_lstm(b, y, width, hidden, reverse=reverse[k], layout=spec.layout, bias=spec.bias,
                          state=spec.state, batch=spec.batch, in_graph=spec.in_graph_weights,
                          name=spec.names.get(f"lstm{k}", f"lstm_{k}"))
        axes, width = ("t1nf" if spec.layout == 0 else "nt1f"), hidden
        if k + 1 < len(spec.hidden):
            y, axes = _link(b, y, axes, spec, hidden)
    out, axes = _select(b, y, y_h, axes, spec, reverse[-1])
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
    """A graph output with axes `axes` rearranged as reference.forward returns it: [N, T, O] or [N, O]."""
    units = tuple(k for k, c in enumerate(axes) if c == "1")
    y, axes = np.squeeze(y, axis=units), axes.replace("1", "")
    return np.transpose(y, [axes.index(c) for c in ("ntf" if "t" in axes else "nf")])


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
