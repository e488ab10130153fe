"""The quantized model: every integer the C code and the simulator use, and nothing to compute.

Written by the quantizer, read by the C generator and the simulator, saved next to the C as
`NAME.qmodel.json` so `simulate` and `verify` run exactly what the C contains.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from .errors import ModelFormatError
from .fixedpoint import quantize_multiplier
from .ir import Activation

FORMAT_VERSION = 2


def round_half_away(v):
    """std::round: to nearest, ties away from zero (exact: v - trunc(v) is computed without error)."""
    v = np.asarray(v, dtype=np.float64)
    whole = np.trunc(v)
    return whole + np.where(np.abs(v - whole) >= 0.5, np.sign(v), 0.0)


@dataclass(frozen=True)
class QuantParams:
    """real = scale * (q - zero_point); scale is a float32 value, as TFLite stores it."""

    scale: float
    zero_point: int

    def quantize(self, real: np.ndarray) -> np.ndarray:
        """Round half away from zero (TFLite), then saturate to int8."""
        q = round_half_away(np.asarray(real, dtype=np.float64) / float(self.scale)) + self.zero_point
        return np.clip(q, -128, 127).astype(np.int8)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return (np.asarray(q, dtype=np.float64) - self.zero_point) * float(self.scale)


@dataclass(frozen=True)
class Requant:
    """A real factor as multiplier * 2^(shift - 31) (TFLite fixed-point multiplier)."""

    multiplier: int
    shift: int

    @classmethod
    def from_real(cls, real: float) -> "Requant":
        return cls(*quantize_multiplier(real))


def _frozen(a, dtype) -> np.ndarray:
    a = np.array(a, dtype=dtype, copy=True)
    a.flags.writeable = False
    return a


def _freeze_optional(obj, name: str, dtype) -> None:
    if getattr(obj, name) is not None:
        object.__setattr__(obj, name, _frozen(getattr(obj, name), dtype))


@dataclass(frozen=True)
class QRecurrentLayer:
    """What every integer recurrent layer has: per-gate int8 matrices, folded int32 biases, the
    multipliers to the gates' Q3.12 scale, and its input and hidden quantization."""

    name: str
    input_weights: np.ndarray      # int8 [G, H, I]
    recurrent_weights: np.ndarray  # int8 [G, H, H]
    input_bias: np.ndarray         # int32 [G, H], zp_x folded in
    recurrent_bias: np.ndarray     # int32 [G, H], zp_h folded in
    input_requant: Tuple[Requant, ...]
    recurrent_requant: Tuple[Requant, ...]
    input_q: QuantParams
    hidden_q: QuantParams

    def __post_init__(self):
        object.__setattr__(self, "input_weights", _frozen(self.input_weights, np.int8))
        object.__setattr__(self, "recurrent_weights", _frozen(self.recurrent_weights, np.int8))
        object.__setattr__(self, "input_bias", _frozen(self.input_bias, np.int32))
        object.__setattr__(self, "recurrent_bias", _frozen(self.recurrent_bias, np.int32))
        object.__setattr__(self, "input_requant", tuple(self.input_requant))
        object.__setattr__(self, "recurrent_requant", tuple(self.recurrent_requant))

    @property
    def input_size(self) -> int:
        return int(self.input_weights.shape[2])

    @property
    def hidden_size(self) -> int:
        return int(self.input_weights.shape[1])


@dataclass(frozen=True)
class QLstmLayer(QRecurrentLayer):
    """Integer LSTM layer (TFLite Micro int8x8_16), gates i, f, g, o; the recurrent bias holds only
    the folded zero point (an LSTM has no separate recurrent bias)."""

    forget_cell_requant: Requant  # 2^-15: f * c -> c
    input_cell_requant: Requant   # 2^-30 / s_c: i * g -> c
    hidden_requant: Requant       # 2^-30 / s_h: o * tanh(c) -> h
    cell_scale_power: int         # cell state scale = 2^cell_scale_power
    cell_clip: int = 0            # quantized clip, 0 = none
    gate_clip: int = 0            # ONNX clip on the Q3.12 pre-activations, 0 = none
    input_forget: bool = False    # ONNX input_forget: f = 1 - i
    initial_hidden: Optional[np.ndarray] = None  # int8 [H] reset value (None: zp_h, a real zero)
    initial_cell: Optional[np.ndarray] = None    # int16 [H] reset value (None: 0)
    peephole_weights: Optional[np.ndarray] = None  # int16 [3, H] (input, forget, output), symmetric
    peephole_requant: Tuple[Requant, ...] = ()     # per peephole gate: s_P * s_c / 2^-12

    def __post_init__(self):
        super().__post_init__()
        _freeze_optional(self, "initial_hidden", np.int8)
        _freeze_optional(self, "initial_cell", np.int16)
        _freeze_optional(self, "peephole_weights", np.int16)
        object.__setattr__(self, "peephole_requant", tuple(self.peephole_requant))

    @property
    def state_bytes(self) -> int:
        return 3 * self.hidden_size  # int8 hidden + int16 cell

    @property
    def cell_tanh_shift(self) -> int:
        """tanh reads the cell state (scale 2^p) as if at scale 2^(shift - 12): shift = p + 12."""
        return self.cell_scale_power + 12


@dataclass(frozen=True)
class QGruLayer(QRecurrentLayer):
    """Integer GRU layer (our extension of the TFLM LSTM scheme; see docs/arithmetic.md), gates
    z, r, n. The input bias holds the biases outside the reset product; the recurrent bias holds
    Rb_n when linear_before_reset puts it inside."""

    hidden_to_q15_requant: Requant  # s_h / 2^-15: h_prev (minus zp) into Q0.15
    q15_to_hidden_requant: Requant  # 2^-15 / s_h: the new h from Q0.15 to int8
    linear_before_reset: bool = True
    initial_hidden: Optional[np.ndarray] = None  # int8 [H] reset value (None: zp_h, a real zero)
    gate_clip: int = 0  # ONNX clip on the Q3.12 pre-activations of z, r and n, 0 = none

    def __post_init__(self):
        super().__post_init__()
        _freeze_optional(self, "initial_hidden", np.int8)

    @property
    def state_bytes(self) -> int:
        return self.hidden_size  # int8 hidden state only


@dataclass(frozen=True)
class QBidirectionalLayer:
    """Two integer layers of one kind over the same window, sharing input and hidden quantization so
    their outputs concatenate into one int8 vector per step: [forward, backward]."""

    name: str
    forward: "QLstmLayer | QGruLayer"
    backward: "QLstmLayer | QGruLayer"

    @property
    def input_q(self) -> QuantParams:
        return self.forward.input_q

    @property
    def hidden_q(self) -> QuantParams:
        return self.forward.hidden_q

    @property
    def input_size(self) -> int:
        return self.forward.input_size

    @property
    def hidden_size(self) -> int:
        """Width of the concatenated output."""
        return 2 * self.forward.hidden_size

    @property
    def state_bytes(self) -> int:
        return self.forward.state_bytes + self.backward.state_bytes

    @property
    def directions(self):
        return (self.forward, self.backward)


@dataclass(frozen=True)
class QDenseLayer:
    name: str
    weights: np.ndarray        # int8 [N, K]
    bias: np.ndarray           # int32 [N], zp_in folded in
    requant: Tuple[Requant, ...]  # one per output channel
    input_q: QuantParams
    output_q: QuantParams      # of the fully connected result (before a table activation)
    activation: Activation
    activation_min: int
    activation_max: int
    table: Optional[np.ndarray] = None   # int8 [256] for tanh / sigmoid
    table_q: Optional[QuantParams] = None  # quantization of the table's output

    def __post_init__(self):
        object.__setattr__(self, "weights", _frozen(self.weights, np.int8))
        object.__setattr__(self, "bias", _frozen(self.bias, np.int32))
        object.__setattr__(self, "requant", tuple(self.requant))
        object.__setattr__(self, "activation", Activation(self.activation))
        if self.table is not None:
            object.__setattr__(self, "table", _frozen(self.table, np.int8))

    @property
    def input_size(self) -> int:
        return int(self.weights.shape[1])

    @property
    def output_size(self) -> int:
        return int(self.weights.shape[0])

    @property
    def result_q(self) -> QuantParams:
        return self.table_q if self.table is not None else self.output_q


@dataclass(frozen=True)
class QuantizedModel:
    name: str                       # C prefix
    recurrent_layers: Tuple["QLstmLayer | QGruLayer | QBidirectionalLayer", ...]
    head: Tuple[QDenseLayer, ...]
    sequence_output: bool
    final_softmax: Optional[str] = None
    source: str = ""
    last_step_from: str = "final_state"  # see ir.FloatModel
    max_steps: int = 0  # window length of models with bidirectional layers; 0: streaming

    @property
    def unidirectional_layers(self):
        """Every LSTM / GRU layer, a bidirectional layer counting as its two directions."""
        return tuple(d for l in self.recurrent_layers for d in getattr(l, "directions", (l,)))

    @property
    def streaming(self) -> bool:
        """True when every layer runs step by step (NAME_step exists); False for window models."""
        return not any(isinstance(l, QBidirectionalLayer) for l in self.recurrent_layers)

    def __post_init__(self):
        object.__setattr__(self, "recurrent_layers", tuple(self.recurrent_layers))
        object.__setattr__(self, "head", tuple(self.head))

    @property
    def input_q(self) -> QuantParams:
        return self.recurrent_layers[0].input_q

    @property
    def output_q(self) -> QuantParams:
        return self.head[-1].result_q if self.head else self.recurrent_layers[-1].hidden_q

    @property
    def input_size(self) -> int:
        return self.recurrent_layers[0].input_size

    @property
    def output_size(self) -> int:
        return self.head[-1].output_size if self.head else self.recurrent_layers[-1].hidden_size

    @property
    def is_classifier(self) -> bool:
        return self.output_size > 1 and (self.final_softmax is not None or not self.sequence_output)

    # ------------------------------------------------------------------ sizes (inspect, footprint)
    @property
    def weight_bytes(self) -> int:
        n = sum(l.input_weights.size + l.recurrent_weights.size + 4 * (l.input_bias.size + l.recurrent_bias.size)
                for l in self.unidirectional_layers)  # same arrays for LSTM and GRU layers
        return n + sum(d.weights.size + 4 * d.bias.size + 8 * d.output_size
                       + (256 if d.table is not None else 0) for d in self.head)

    @property
    def state_bytes(self) -> int:
        """int8 hidden (+ int16 cell for LSTM) per layer: the NAME_state_t payload."""
        return sum(l.state_bytes for l in self.recurrent_layers)


# ---------------------------------------------------------------------- JSON (de)serialization
# One codec for every layer dataclass, driven by its fields: arrays become nested lists,
# Requant [multiplier, shift], QuantParams {scale, zero_point}; the field name says how to read
# a value back (*_requant / requant, *_q, arrays by the layer's dtype table below).

_ARRAY_DTYPES = {"input_weights": np.int8, "recurrent_weights": np.int8, "input_bias": np.int32,
                 "recurrent_bias": np.int32, "weights": np.int8, "bias": np.int32, "table": np.int8,
                 "initial_hidden": np.int8, "initial_cell": np.int16, "peephole_weights": np.int16}


def _encode(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Requant):
        return [int(value.multiplier), int(value.shift)]
    if isinstance(value, QuantParams):
        return {"scale": float(value.scale), "zero_point": int(value.zero_point)}
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    if isinstance(value, Activation):
        return value.value
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return int(value)  # numpy integers


def _decode(name: str, value):
    if value is None:
        return None
    if name in _ARRAY_DTYPES:
        return np.array(value, dtype=_ARRAY_DTYPES[name])
    if name.endswith("requant"):
        if not value or isinstance(value[0], list):  # a tuple of multipliers (possibly empty)
            return tuple(Requant(int(m), int(s)) for m, s in value)
        return Requant(int(value[0]), int(value[1]))
    if name.endswith("_q"):
        return QuantParams(float(value["scale"]), int(value["zero_point"]))
    if name == "activation":
        return Activation(value)
    return value


def _layer_to_dict(layer) -> dict:
    if isinstance(layer, QBidirectionalLayer):
        return {"kind": "bidirectional", "name": layer.name, "forward": _layer_to_dict(layer.forward),
                "backward": _layer_to_dict(layer.backward)}
    kind = {QLstmLayer: "lstm", QGruLayer: "gru", QDenseLayer: "dense"}[type(layer)]
    return {"kind": kind, **{f.name: _encode(getattr(layer, f.name)) for f in dataclasses.fields(layer)}}


def _layer_from_dict(d: dict):
    if d["kind"] == "bidirectional":
        return QBidirectionalLayer(name=d["name"], forward=_layer_from_dict(d["forward"]),
                                   backward=_layer_from_dict(d["backward"]))
    cls = {"lstm": QLstmLayer, "gru": QGruLayer, "dense": QDenseLayer}[d["kind"]]
    return cls(**{f.name: _decode(f.name, d[f.name]) for f in dataclasses.fields(cls) if f.name in d})


_MODEL_FIELDS = ("name", "source", "sequence_output", "final_softmax", "last_step_from", "max_steps")


def to_dict(model: QuantizedModel) -> dict:
    return {
        "format": "lstm-edge quantized model",
        "format_version": FORMAT_VERSION,
        **{name: _encode(getattr(model, name)) for name in _MODEL_FIELDS},
        "recurrent_layers": [_layer_to_dict(l) for l in model.recurrent_layers],
        "head": [_layer_to_dict(d) for d in model.head],
    }


def from_dict(d: dict) -> QuantizedModel:
    if d.get("format_version") != FORMAT_VERSION:
        raise ModelFormatError(f"quantized model format version {d.get('format_version')!r} is not "
                               f"{FORMAT_VERSION}: recompile the model with this lstm-edge")
    return QuantizedModel(**{name: d[name] for name in _MODEL_FIELDS},
                          recurrent_layers=tuple(_layer_from_dict(l) for l in d["recurrent_layers"]),
                          head=tuple(_layer_from_dict(h) for h in d["head"]))


def save(model: QuantizedModel, path: Path) -> None:
    Path(path).write_text(json.dumps(to_dict(model), separators=(",", ":")) + "\n")


def load(path: Path) -> QuantizedModel:
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: no such file (is this a folder written by `lstm-edge compile`?)")
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{path}: not a readable quantized model ({exc})")
    try:
        return from_dict(d)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ModelFormatError(f"{path}: malformed quantized model ({type(exc).__name__}: {exc})")
