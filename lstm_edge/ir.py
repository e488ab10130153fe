"""Float intermediate representation: what every importer produces.

One canonical gate order for the whole project: (input, forget, cell, output), written
i, f, g, o (PyTorch and TFLite use the same order; ONNX and Keras do not). The function
`to_canonical_gate_order` is the one place where another framework's order is converted.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np

from .errors import ModelFormatError

CANONICAL_GATES = "ifgo"  # input, forget, cell candidate (g), output
GATE_NAMES = ("input", "forget", "cell", "output")

# Gate order of each framework's stacked [4H, ...] weight tensors, as letters of CANONICAL_GATES.
SOURCE_GATE_ORDERS = {
    "onnx": "iofg",  # ONNX LSTM: i, o, f, c
    "pytorch": "ifgo",
    "keras": "ifgo",  # Keras: i, f, c, o
    "tflite": "ifgo",
}
# An order written out as letters (the .npz schema states its gate order this way): any permutation.
SOURCE_GATE_ORDERS.update({"".join(p): "".join(p) for p in itertools.permutations(CANONICAL_GATES)})


# GRU: canonical (update z, reset r, new n). ONNX and Keras stack z, r, h(=n); PyTorch r, z, n.
CANONICAL_GRU_GATES = "zrn"
SOURCE_GRU_GATE_ORDERS = {"onnx": "zrn", "keras": "zrn", "pytorch": "rzn", "tflite": "zrn"}


# LSTM peepholes: three vectors (no cell-candidate peephole). Canonical (input, forget, output);
# ONNX stacks P as i, o, f.
SOURCE_PEEPHOLE_ORDERS = {"onnx": "iof", "canonical": "ifo"}


def peephole_to_canonical(stacked: np.ndarray, source: str) -> np.ndarray:
    """Split a [3H] stacked peephole vector in `source` order into canonical [3, H] (i, f, o)."""
    parts = dict(zip(SOURCE_PEEPHOLE_ORDERS[source], np.split(np.asarray(stacked, dtype=np.float32), 3)))
    return np.stack([parts[g] for g in "ifo"])


def to_canonical_gate_order(stacked: np.ndarray, source: str, cell: str = "lstm") -> np.ndarray:
    """Split a stacked gate tensor in `source` order into a canonical [G, H, ...] array
    (G = 4 for cell="lstm", 3 for cell="gru")."""
    canonical, orders = (CANONICAL_GATES, SOURCE_GATE_ORDERS) if cell == "lstm" else (
        CANONICAL_GRU_GATES, SOURCE_GRU_GATE_ORDERS)
    order = orders[source]
    count = len(canonical)
    if stacked.shape[0] % count:
        raise ModelFormatError(f"stacked {cell.upper()} gate tensor has {stacked.shape[0]} rows, "
                               f"not a multiple of {count}")
    parts = np.split(np.asarray(stacked, dtype=np.float32), count, axis=0)
    by_letter = dict(zip(order, parts))
    return np.stack([by_letter[g] for g in canonical])


class Activation(str, enum.Enum):
    NONE = "none"
    RELU = "relu"
    TANH = "tanh"
    SIGMOID = "sigmoid"


def _frozen_array(a: np.ndarray, dtype=np.float32) -> np.ndarray:
    a = np.array(a, dtype=dtype, copy=True)
    a.flags.writeable = False
    return a


def _check_gate_arrays(layer, kind: str, gates: int, arrays, states) -> None:
    """Freeze a recurrent layer's arrays and check them: w_x [G, H, I], w_h [G, H, H], biases [G, H],
    all finite; then its optional initial-state vectors."""
    for label in arrays:
        object.__setattr__(layer, label, _frozen_array(getattr(layer, label)))
    if layer.w_x.ndim != 3:
        raise ModelFormatError(f"{kind} layer '{layer.name}': w_x has shape {list(layer.w_x.shape)}, not [G, H, I]")
    h, i = layer.w_x.shape[1], layer.w_x.shape[2]
    wanted = {"w_x": (gates, h, i), "w_h": (gates, h, h)}
    shapes = {label: getattr(layer, label).shape for label in arrays}
    if any(shape != wanted.get(label, (gates, h)) for label, shape in shapes.items()):
        listed = " ".join(f"{label}{list(shape)}" for label, shape in shapes.items())
        raise ModelFormatError(f"{kind} layer '{layer.name}': inconsistent shapes {listed} for {gates} gates of "
                               f"{h} units")
    for label in arrays:
        if not np.all(np.isfinite(getattr(layer, label))):
            raise ModelFormatError(f"{kind} layer '{layer.name}': {label} contains NaN or Inf")
    _check_initial_state(layer, states)


def _check_clip(layer) -> None:
    if layer.clip is not None and not (np.isfinite(layer.clip) and layer.clip > 0):
        raise ModelFormatError(f"layer '{layer.name}': clip must be a positive number, got {layer.clip}")


def _check_initial_state(layer, names) -> None:
    """Freeze the optional initial-state vectors and check they are [H] and finite."""
    for label in names:
        value = getattr(layer, label)
        if value is None:
            continue
        value = _frozen_array(value)
        object.__setattr__(layer, label, value)
        if value.shape != (layer.w_x.shape[1],) or not np.all(np.isfinite(value)):
            raise ModelFormatError(f"layer '{layer.name}': {label} must be {layer.w_x.shape[1]} finite values, "
                                   f"got shape {value.shape}")


class _GateShapes:
    """Sizes read off the gate matrices w_x [G, H, I] of an LSTM or GRU layer."""

    @property
    def input_size(self) -> int:
        return int(self.w_x.shape[2])

    @property
    def hidden_size(self) -> int:
        return int(self.w_x.shape[1])


@dataclass(frozen=True)
class LstmLayer(_GateShapes):
    """One unidirectional LSTM layer, gates in canonical order.

    w_x [4, H, I], w_h [4, H, H], bias [4, H] (input and recurrent biases already summed).
    `reverse` layers run over the sequence back to front (ONNX direction="reverse").
    initial_h, initial_c [H]: the state every sequence starts from (None: zeros).
    clip, input_forget: ONNX's attributes (clip bounds the gates' pre-activations; input_forget sets f = 1 - i).
    """

    w_x: np.ndarray
    w_h: np.ndarray
    bias: np.ndarray
    reverse: bool = False
    name: str = "lstm"
    initial_h: Optional[np.ndarray] = None
    initial_c: Optional[np.ndarray] = None
    clip: Optional[float] = None   # ONNX clip: gate pre-activations bounded to +-clip
    input_forget: bool = False     # ONNX input_forget: f = 1 - i
    peephole: Optional[np.ndarray] = None  # [3, H] in the order (input, forget, output): p (.) c into the gate

    def __post_init__(self):
        _check_gate_arrays(self, "LSTM", 4, ("w_x", "w_h", "bias"), ("initial_h", "initial_c"))
        _check_clip(self)
        if self.peephole is not None:
            object.__setattr__(self, "peephole", _frozen_array(self.peephole))
            if self.peephole.shape != (3, self.hidden_size) or not np.all(np.isfinite(self.peephole)):
                raise ModelFormatError(f"LSTM layer '{self.name}': peephole must be [3, {self.hidden_size}] finite "
                                       f"values, got {list(self.peephole.shape)}")


@dataclass(frozen=True)
class GruLayer(_GateShapes):
    """One unidirectional GRU layer, gates in canonical order (z, r, n).

    w_x [3, H, I], w_h [3, H, H], b_x [3, H], b_h [3, H] (ONNX Wb and Rb: they stay apart because
    with linear_before_reset the recurrent bias of n is inside the reset gate's product).
    h_t = (1 - z) * n + z * h_{t-1}, as ONNX, PyTorch and Keras define it.
    """

    w_x: np.ndarray
    w_h: np.ndarray
    b_x: np.ndarray
    b_h: np.ndarray
    linear_before_reset: bool = True
    reverse: bool = False
    name: str = "gru"
    initial_h: Optional[np.ndarray] = None  # [H], the state every sequence starts from (None: zeros)
    clip: Optional[float] = None  # ONNX clip: the three gates' pre-activations bounded to +-clip

    def __post_init__(self):
        _check_gate_arrays(self, "GRU", 3, ("w_x", "w_h", "b_x", "b_h"), ("initial_h",))
        _check_clip(self)


@dataclass(frozen=True)
class BidirectionalLayer:
    """Two recurrent layers of the same kind over the same input: `forward` from the first step to
    the last, `backward` from the last to the first (both have reverse=False; the wrapper sets
    the direction). Per step the output is [forward, backward] (merge="concat", width 2H) or
    their sum (merge="sum", width H). Needs the whole window: compiled with a maximum length."""

    forward: "LstmLayer | GruLayer"
    backward: "LstmLayer | GruLayer"
    merge: str = "concat"
    name: str = "bidirectional"

    def __post_init__(self):
        f, b = self.forward, self.backward
        if type(f) is not type(b) or f.input_size != b.input_size or f.hidden_size != b.hidden_size:
            raise ModelFormatError(f"bidirectional layer '{self.name}': the two directions differ in kind or size")
        if f.reverse or b.reverse:
            raise ModelFormatError(f"bidirectional layer '{self.name}': directions must be given unreversed")
        if self.merge not in ("concat", "sum"):
            raise ModelFormatError(f"bidirectional layer '{self.name}': unknown merge mode {self.merge!r}")

    @property
    def input_size(self) -> int:
        return self.forward.input_size

    @property
    def hidden_size(self) -> int:
        """Width of the merged output."""
        return self.forward.hidden_size * (2 if self.merge == "concat" else 1)

    @property
    def reverse(self) -> bool:
        return False


@dataclass(frozen=True)
class DenseLayer:
    """y = activation(w @ x + b); w [N, K], b [N]."""

    w: np.ndarray
    b: np.ndarray
    activation: Activation = Activation.NONE
    name: str = "dense"

    def __post_init__(self):
        object.__setattr__(self, "w", _frozen_array(self.w))
        object.__setattr__(self, "b", _frozen_array(self.b))
        object.__setattr__(self, "activation", Activation(self.activation))
        if self.w.ndim != 2 or self.b.shape != (self.w.shape[0],):
            raise ModelFormatError(
                f"dense layer '{self.name}': weight {self.w.shape} and bias {self.b.shape} do not fit")
        if not (np.all(np.isfinite(self.w)) and np.all(np.isfinite(self.b))):
            raise ModelFormatError(f"dense layer '{self.name}': weights contain NaN or Inf")

    @property
    def input_size(self) -> int:
        return int(self.w.shape[1])

    @property
    def output_size(self) -> int:
        return int(self.w.shape[0])


@dataclass(frozen=True)
class FloatModel:
    """A stack of recurrent layers (LstmLayer, GruLayer, BidirectionalLayer) followed by an optional
    dense head.

    sequence_output: True when the model emits one output per time step; False when only one
    step's output is used (a classifier on the final state).
    last_step_from: with sequence_output False, "final_state" takes each direction's final state
    (ONNX Y_h, PyTorch h_n, Keras return_sequences=False); "last_index" takes the output sequence
    at index T-1 (PyTorch out[:, -1]). They differ only for reverse and bidirectional layers.
    final_softmax: "softmax" / "logsoftmax" when the graph ends in one; the compiled model
    outputs the logits before it (argmax is unchanged), the float reference applies it.
    """

    recurrent_layers: Tuple["LstmLayer | GruLayer | BidirectionalLayer", ...]
    head: Tuple[DenseLayer, ...] = ()
    sequence_output: bool = True
    final_softmax: Optional[str] = None
    last_step_from: str = "final_state"
    name: str = "model"
    source: str = ""
    notes: Tuple[str, ...] = field(default=())

    def __post_init__(self):
        object.__setattr__(self, "recurrent_layers", tuple(self.recurrent_layers))
        object.__setattr__(self, "head", tuple(self.head))
        object.__setattr__(self, "notes", tuple(self.notes))
        if not self.recurrent_layers:
            raise ModelFormatError("model has no LSTM layer")
        if self.last_step_from not in ("final_state", "last_index"):
            raise ModelFormatError(f"unknown last-step selection {self.last_step_from!r}")
        if self.final_softmax not in (None, "softmax", "logsoftmax"):
            raise ModelFormatError(f"unknown final activation {self.final_softmax!r}")
        width = self.recurrent_layers[0].input_size
        for layer in self.recurrent_layers:
            if layer.input_size != width:
                raise ModelFormatError(
                    f"layer '{layer.name}' expects {layer.input_size} inputs but receives {width}")
            width = layer.hidden_size
        for dense in self.head:
            if dense.input_size != width:
                raise ModelFormatError(
                    f"dense layer '{dense.name}' expects {dense.input_size} inputs but receives {width}")
            width = dense.output_size

    @property
    def input_size(self) -> int:
        return self.recurrent_layers[0].input_size

    @property
    def output_size(self) -> int:
        return self.head[-1].output_size if self.head else self.recurrent_layers[-1].hidden_size

    @property
    def parameter_count(self) -> int:
        n = sum(sum(a.size for a in layer_arrays(l)) for l in self.recurrent_layers)
        return n + sum(d.w.size + d.b.size for d in self.head)


def layer_arrays(layer) -> Tuple[np.ndarray, ...]:
    """The parameter arrays of a recurrent layer, whatever its kind."""
    if isinstance(layer, BidirectionalLayer):
        return layer_arrays(layer.forward) + layer_arrays(layer.backward)
    if isinstance(layer, GruLayer):
        return (layer.w_x, layer.w_h, layer.b_x, layer.b_h)
    return (layer.w_x, layer.w_h, layer.bias)
