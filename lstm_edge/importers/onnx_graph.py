"""Reading an ONNX file safely and finding one's way around its graph.

Nothing here knows about LSTMs: loading (with external data kept inside the model's folder),
indexing producers and initializers, ordering the nodes an output needs, and reading node
attributes and the opset-dependent parameters of Squeeze/Unsqueeze/Slice.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx
from onnx import external_data_helper, helper

from ..errors import ModelFormatError, UnsupportedModelError

DEFAULT_DOMAINS = ("", "ai.onnx")


def describe(node: onnx.NodeProto) -> str:
    """How every message names a node: its name (or first output) and op type."""
    if node.name:
        return f"node '{node.name}' ({node.op_type})"
    first = node.output[0] if node.output else "?"
    return f"unnamed node with output '{first}' ({node.op_type})"


def first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def node_attrs(node: onnx.NodeProto) -> dict:
    """Attribute values by name; strings decoded, so 'direction' compares with str."""
    values = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode("utf-8", "replace") for v in value]
        values[attr.name] = value
    return values


# --- loading -------------------------------------------------------------------------------

def read_model(path: Path) -> onnx.ModelProto:
    """Parse `path` and load its external data; every failure is one ModelFormatError line."""
    if not path.is_file():
        raise ModelFormatError(f"model file '{path}' not found")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types on a corrupt file
        raise ModelFormatError(f"cannot read ONNX model '{path}': {first_line(exc)}") from None
    if not model.graph.node:
        raise ModelFormatError(f"'{path}' holds no ONNX graph (empty, truncated or not an ONNX file)")
    _load_external_data(model, path)
    return model


def _tensors_in(graph: onnx.GraphProto) -> List[onnx.TensorProto]:
    tensors = list(graph.initializer)
    for node in graph.node:  # Constant nodes can keep their value in the side file too
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                tensors.append(attr.t)
            elif attr.type == onnx.AttributeProto.TENSORS:
                tensors.extend(attr.tensors)
            elif attr.type == onnx.AttributeProto.GRAPH:
                tensors.extend(_tensors_in(attr.g))
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    tensors.extend(_tensors_in(sub))
    return tensors


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    external = [t for t in _tensors_in(model.graph) if external_data_helper.uses_external_data(t)]
    if not external:
        return
    folder = os.path.realpath(path.parent)
    for tensor in external:
        _check_external_location(tensor, folder, path)
    try:
        external_data_helper.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:  # wrong offset/length, unreadable file, onnx's own path checks
        raise ModelFormatError(f"cannot load the external data of '{path}': {first_line(exc)}") from None


def _check_external_location(tensor: onnx.TensorProto, folder: str, path: Path) -> None:
    """Weights in a side file must live in the model's own folder: a model file must not be
    able to make us read arbitrary files (absolute paths, '..', symlinks pointing out)."""
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    where = f"'{path}': tensor '{tensor.name}' keeps its data in '{location}'"
    if not location:
        raise ModelFormatError(f"'{path}': tensor '{tensor.name}' uses external data without a location")
    relative = location.replace("\\", "/")
    if relative.startswith("/") or re.match(r"^[A-Za-z]:", relative) or os.path.isabs(relative):
        raise ModelFormatError(f"{where}, an absolute path; external data must be a file in the model's folder")
    target = os.path.realpath(os.path.join(folder, relative))
    if os.path.commonpath([folder, target]) != folder:
        raise ModelFormatError(f"{where}, which is outside the model's folder; refusing to read it")
    if not os.path.isfile(target):
        raise ModelFormatError(f"{where}, but that file is missing (copy it next to the model)")


# --- the graph -----------------------------------------------------------------------------

@dataclass
class GraphIndex:
    """Lookup tables over the top-level graph of a model."""

    model: onnx.ModelProto
    path: Path
    opset: int
    producers: Dict[str, int]  # value name -> index of the node that computes it
    initializers: Dict[str, onnx.TensorProto]
    free_inputs: Dict[str, onnx.ValueInfoProto]  # graph inputs not backed by an initializer

    @classmethod
    def build(cls, model: onnx.ModelProto, path: Path) -> "GraphIndex":
        graph = model.graph
        if graph.sparse_initializer:
            raise UnsupportedModelError(f"'{path}': sparse initializers are not supported")
        producers: Dict[str, int] = {}
        for position, node in enumerate(graph.node):
            for name in node.output:
                if name and name in producers:
                    raise ModelFormatError(f"'{path}': value '{name}' is produced by two nodes")
                if name:
                    producers[name] = position
        initializers = {t.name: t for t in graph.initializer}
        free = {v.name: v for v in graph.input if v.name not in initializers}
        return cls(model, path, _default_opset(model, path), producers, initializers, free)

    @property
    def nodes(self) -> Sequence[onnx.NodeProto]:
        return self.model.graph.node

    @property
    def output_names(self) -> List[str]:
        return [o.name for o in self.model.graph.output]

    def nodes_needed_for(self, value: str) -> List[onnx.NodeProto]:
        """The nodes `value` depends on, each after the nodes computing its inputs.

        Only these are examined, so unused side branches (e.g. an unused Y_c) cannot
        cause an error."""
        ordered: List[int] = []
        seen = set()
        stack = [(self.producers[value], False)] if value in self.producers else []
        while stack:
            position, inputs_done = stack.pop()
            if inputs_done:
                ordered.append(position)
                continue
            if position in seen:
                continue
            seen.add(position)
            stack.append((position, True))
            for name in self.nodes[position].input:
                parent = self.producers.get(name)
                if parent is not None and parent not in seen:
                    stack.append((parent, False))
        return [self.nodes[p] for p in ordered]

    def free_inputs_needed_for(self, value: str) -> List[str]:
        names = {value}
        for node in self.nodes_needed_for(value):
            names.update(node.input)
        return [name for name in self.free_inputs if name in names]


def _default_opset(model: onnx.ModelProto, path: Path) -> int:
    for entry in model.opset_import:
        if entry.domain in DEFAULT_DOMAINS:
            return int(entry.version)
    raise ModelFormatError(f"'{path}' does not declare a version of the standard ONNX operator set")


# --- opset-dependent parameters ------------------------------------------------------------

def int_list(value) -> Optional[List[int]]:
    """A constant int tensor as a list of Python ints; None for anything else."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "iu":
        return [int(v) for v in value.reshape(-1)]
    return None


def axes_param(node: onnx.NodeProto, inputs: list, opset: int, since: int = 13) -> Optional[List[int]]:
    """The `axes` of Squeeze/Unsqueeze: an attribute before opset 13, input 1 from then on."""
    if opset < since:
        return node_attrs(node).get("axes")
    if len(inputs) < 2 or inputs[1] is None:
        return None
    axes = int_list(inputs[1])
    if axes is None:
        raise UnsupportedModelError(f"{describe(node)}: its axes must be a constant")
    return axes


def slice_params(node: onnx.NodeProto, inputs: list, opset: int, rank: int):
    """[(axis, start, end, step)] of a Slice node, from attributes (opset < 10) or inputs."""
    if opset < 10:
        attrs = node_attrs(node)
        starts, ends = attrs.get("starts", []), attrs.get("ends", [])
        axes, steps = attrs.get("axes"), None
    else:
        params = [int_list(v) if v is not None else None for v in list(inputs[1:5]) + [None] * 4]
        for slot, given in zip(("starts", "ends", "axes", "steps"), inputs[1:5]):
            if given is not None and int_list(given) is None:
                raise UnsupportedModelError(f"{describe(node)}: its {slot} must be a constant")
        starts, ends, axes, steps = params[:4]
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    return [(a % rank if rank else a, s, e, st) for a, s, e, st in zip(axes, starts, ends, steps)]
