"""Plain arrays in an .npz -> float IR, for trainers no other importer reads.

The schema is docs/npz-schema.md. In short: recurrent layers `lstm{k}/...` or `gru{k}/...`,
numbered together (k = 0, 1, 2, ... in data-flow order, each index used by one layer), either per
gate (LSTM: W_i, W_f, W_g, W_o, R_*, b_*, rb_*, `c` may stand for `g`; GRU: W_z, W_r, W_n, R_*,
b_*, rb_*, `h` may stand for `n`) or stacked (W, R, b, rb) with the gate order stated in
`gate_order`; a GRU states `linear_before_reset`; a bidirectional layer keeps each direction's
arrays under `forward/` and `backward/` (both unreversed) with an optional `merge`;
`dense{d}/W` [out, in], `dense{d}/b`, `dense{d}/activation`; `sequence_output` (required),
optional `last_step_from`, `final_softmax`, `name`, `schema`. Unknown keys are refused, so a
typo cannot silently drop a tensor.

The float-model file that `compile` writes (NAME.float.npz, with a `meta` entry) loads as well.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from ..errors import ModelFormatError, UnsupportedModelError
from ..ir import (CANONICAL_GATES, CANONICAL_GRU_GATES, SOURCE_GRU_GATE_ORDERS, BidirectionalLayer, FloatModel,
                  GruLayer, LstmLayer, to_canonical_gate_order)
from .layer_stack import LAST_STEP_SOURCES, StackBuilder

DOC = "see docs/npz-schema.md"
SCHEMA = "lstm-edge-npz/1"
TOP_KEYS = ("sequence_output", "last_step_from", "final_softmax", "name", "schema", "gate_order")
FRAMEWORK_ORDERS = ("pytorch", "onnx", "keras", "tflite")
RECURRENT_KINDS = ("lstm", "gru")
CANONICAL = {"lstm": CANONICAL_GATES, "gru": CANONICAL_GRU_GATES}
GATE_LETTERS = {"lstm": {"i": "i", "f": "f", "g": "g", "c": "g", "o": "o"},
                "gru": {"z": "z", "r": "r", "n": "n", "h": "n"}}
LETTERS_SHOWN = {"lstm": "i, f, g (or c), o", "gru": "z, r, n (or h)"}
_LAYER_KEY = re.compile(r"^(?P<kind>lstm|gru|dense)(?P<index>\d+)/(?P<field>.+)$")
_GATE_FIELD = re.compile(r"^(?P<part>W|R|b|rb)_(?P<gate>[a-z])$")
STACKED_FIELDS = ("W", "R", "b", "rb")
LAYER_FIELDS = ("gate_order", "linear_before_reset", "merge")
DIRECTIONS = ("forward", "backward")
MERGES = ("concat", "sum")
DENSE_FIELDS = ("W", "b", "activation")


def load_npz_model(path) -> FloatModel:
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"model file '{path}' not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
            if "meta" in keys:  # the NAME.float.npz of a compile output folder (lstm_edge.float_io)
                from ..float_io import load_float_model
                return load_float_model(path)
            arrays = {key: z[key] for key in keys}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelFormatError(f"'{path}' is not a readable .npz file ({str(exc).splitlines()[0]})") from None
    try:
        return _build(path, arrays)
    except (UnsupportedModelError, ModelFormatError) as exc:
        raise type(exc)(f"'{path}': {exc}") from None


def parse_gate_order(value, where: str, cell: str = "lstm") -> str:
    """'i,f,c,o', 'ifgo', 'iofc' (LSTM), 'z,r,h', 'rzn' (GRU) or a framework name ('pytorch', 'onnx',
    'keras', 'tflite') -> the order as canonical letters, or the framework name."""
    order = _gate_order(_text(value, where), cell)
    if order is None:
        raise ModelFormatError(f"{where}: gate order '{_text(value, where).strip().lower()}' is not a permutation "
                               f"of {LETTERS_SHOWN[cell]}, nor one of {', '.join(FRAMEWORK_ORDERS)}")
    return order


def _gate_order(text: str, cell: str) -> Optional[str]:
    text = text.strip().lower()
    if text in FRAMEWORK_ORDERS:
        return text
    letters = "".join(ch for ch in text if ch not in " ,;-_/")
    order = "".join(GATE_LETTERS[cell].get(ch, "?") for ch in letters)
    return order if sorted(order) == sorted(CANONICAL[cell]) else None


def _default_orders(value) -> Dict[str, str]:
    """The top-level `gate_order`: a framework name applies to LSTM and GRU layers alike, letters to
    the kind whose gates they name."""
    text = _text(value, "'gate_order'")
    orders = {cell: _gate_order(text, cell) for cell in RECURRENT_KINDS}
    found = {cell: order for cell, order in orders.items() if order is not None}
    if not found:
        raise ModelFormatError(f"'gate_order': gate order '{text.strip().lower()}' is not a permutation of "
                               f"{LETTERS_SHOWN['lstm']} (LSTM) or {LETTERS_SHOWN['gru']} (GRU), nor one of "
                               f"{', '.join(FRAMEWORK_ORDERS)}")
    return found


def _to_canonical(stacked: np.ndarray, order: str, cell: str) -> np.ndarray:
    """[G*H, ...] blocks in `order` (letters or a framework) -> [G, H, ...] canonical, through the IR's
    one conversion function."""
    if cell == "lstm":
        return to_canonical_gate_order(stacked, order)  # every permutation is a source order
    if order not in SOURCE_GRU_GATE_ORDERS:
        by_letters = {letters: source for source, letters in SOURCE_GRU_GATE_ORDERS.items()}
        if order in by_letters:
            order = by_letters[order]
        else:  # a rarer permutation: put the blocks in z, r, n order first
            blocks = dict(zip(order, np.split(np.asarray(stacked), 3, axis=0)))
            stacked, order = np.concatenate([blocks[g] for g in CANONICAL_GRU_GATES]), by_letters[CANONICAL_GRU_GATES]
    return to_canonical_gate_order(stacked, order, cell="gru")


def _text(value, where: str) -> str:
    a = np.asarray(value)
    if a.shape != () or a.dtype.kind not in "US":
        raise ModelFormatError(f"{where} must be a string scalar (np.array('...')), found {a.dtype} {list(a.shape)}")
    return str(a[()].decode() if a.dtype.kind == "S" else a[()])


def _flag(value, where: str) -> bool:
    a = np.asarray(value)
    if a.shape != () or a.dtype.kind not in "biu" or int(a) not in (0, 1):
        raise ModelFormatError(f"{where} must be a scalar true/false (or 1/0), found {a.dtype} {list(a.shape)}")
    return bool(a)


def _matrix(arrays, key: str, shape) -> np.ndarray:
    a = np.asarray(arrays[key])
    if a.dtype.kind != "f":
        raise ModelFormatError(f"'{key}' has dtype {a.dtype}; weights must be floating point")
    if tuple(a.shape) != tuple(shape):
        raise ModelFormatError(f"'{key}' has shape {list(a.shape)}, expected {list(shape)}")
    return a.astype(np.float32)


def _group(arrays: Dict[str, np.ndarray]):
    """{('lstm' or 'gru', k): {field: key}, ('dense', d): {...}}; refuses unknown keys, gaps in the
    numbering and a recurrent index used twice."""
    groups: Dict[tuple, Dict[str, str]] = {}
    for key in arrays:
        if key in TOP_KEYS:
            continue
        m = _LAYER_KEY.match(key)
        if not m:
            if set(arrays) <= {"x", "y"}:
                raise ModelFormatError(f"holds {', '.join(sorted(arrays))}: a data file, not a model; a model "
                                       f".npz has lstm0/... (or gru0/...) arrays; {DOC}")
            raise ModelFormatError(f"unknown key '{key}'; {DOC}")
        groups.setdefault((m["kind"], int(m["index"])), {})[m["field"]] = key
    recurrent = sorted((k, kind) for (kind, k) in groups if kind in RECURRENT_KINDS)
    indices = [k for k, _ in recurrent]
    twice = sorted({k for k in indices if indices.count(k) > 1})
    if twice:
        raise ModelFormatError(f"lstm{twice[0]} and gru{twice[0]} both exist; recurrent layers share one numbering, "
                               f"each index names one layer")
    if indices != list(range(len(indices))):
        raise ModelFormatError(f"recurrent (lstm/gru) layers are numbered {indices}; number them 0, 1, 2, ... "
                               f"without gaps")
    dense = sorted(k for (g, k) in groups if g == "dense")
    if dense != list(range(len(dense))):
        raise ModelFormatError(f"dense layers are numbered {dense}; number them 0, 1, 2, ... without gaps")
    return groups, [kind for _, kind in recurrent]


def _recurrent_layer(arrays, kind: str, k: int, fields: Dict[str, str], default_orders: Dict[str, str],
                     width: Optional[int]):
    """One lstm{k} / gru{k} layer, unidirectional or bidirectional."""
    where = f"{kind}{k}"
    layer_fields = {f: key for f, key in fields.items() if f in LAYER_FIELDS}
    rest = {f: key for f, key in fields.items() if f not in LAYER_FIELDS}
    order = None
    if "gate_order" in layer_fields:
        order = parse_gate_order(arrays[layer_fields["gate_order"]], f"'{where}/gate_order'", kind)
    elif kind in default_orders:
        order = default_orders[kind]
    lbr = None
    if kind == "gru":
        if "linear_before_reset" not in layer_fields:
            raise ModelFormatError(f"{where} has no '{where}/linear_before_reset': store np.array(True) (PyTorch, "
                                   f"Keras reset_after=True: r multiplies R_n h + rb_n) or np.array(False) (Keras "
                                   f"reset_after=False, ONNX's default: R_n multiplies r * h)")
        lbr = _flag(arrays[layer_fields["linear_before_reset"]], f"'{where}/linear_before_reset'")
    elif "linear_before_reset" in layer_fields:
        raise ModelFormatError(f"'{where}/linear_before_reset' is for GRU layers only")
    directional = [f for f in rest if f.split("/")[0] in DIRECTIONS]
    if directional:
        other = sorted(set(rest) - set(directional))
        if other:
            raise ModelFormatError(f"'{where}/{other[0]}': a bidirectional layer keeps its arrays under "
                                   f"'{where}/forward/' and '{where}/backward/'; {DOC}")
        merge = _text(arrays[layer_fields["merge"]], f"'{where}/merge'").lower() if "merge" in layer_fields \
            else "concat"
        if merge not in MERGES:
            raise ModelFormatError(f"'{where}/merge' is '{merge}'; a bidirectional layer merges by 'concat' or 'sum'")
        parts = []
        for direction in DIRECTIONS:
            sub = {f[len(direction) + 1:]: key for f, key in rest.items() if f.startswith(direction + "/")}
            if not sub:
                raise ModelFormatError(f"{where} has '{where}/{directional[0]}' but no '{where}/{direction}/...' "
                                       f"arrays; a bidirectional layer needs both directions")
            parts.append(_direction(arrays, kind, f"{where}/{direction}", sub, order, lbr, f"{where}.{direction}"))
        layer = BidirectionalLayer(parts[0], parts[1], merge=merge, name=where)
    else:
        if "merge" in layer_fields:
            raise ModelFormatError(f"'{where}/merge' is for bidirectional layers (arrays under '{where}/forward/' "
                                   f"and '{where}/backward/')")
        layer = _direction(arrays, kind, where, rest, order, lbr, where)
    if width is not None and layer.input_size != width:
        raise ModelFormatError(f"{where} takes {layer.input_size} inputs, the layer before outputs {width}")
    return layer


def _direction(arrays, kind: str, where: str, fields: Dict[str, str], order: Optional[str],
               lbr: Optional[bool], name: str):
    """The arrays of one direction (per gate or stacked) -> LstmLayer or GruLayer."""
    gates = CANONICAL[kind]
    peepholes = [f for f in fields if f.startswith("P")]
    if peepholes:
        raise UnsupportedModelError(f"{where}/{peepholes[0]}: peephole weights are not supported yet")
    per_gate = {f: key for f, key in fields.items() if _gate_field(f, kind)}
    stacked = {f: key for f, key in fields.items() if f in STACKED_FIELDS}
    unknown = sorted(set(fields) - set(per_gate) - set(stacked))
    if unknown:
        raise ModelFormatError(f"unknown key '{where}/{unknown[0]}'; a{'n' if kind == 'lstm' else ''} "
                               f"{kind.upper()} layer has W_{gates[0]}.. R_{gates[0]}.. b_{gates[0]}.. "
                               f"rb_{gates[0]}.. (per gate, gates {LETTERS_SHOWN[kind]}) or W, R, b, rb (stacked, "
                               f"with a gate_order); {DOC}")
    if per_gate and stacked:
        raise ModelFormatError(f"{where} mixes per-gate arrays ({sorted(per_gate)[0]}) and stacked ones "
                               f"({sorted(stacked)[0]}); use one form")
    count = len(gates)
    if per_gate:
        w, r, b, rb = _per_gate(arrays, where, per_gate, kind)
        order = gates  # _per_gate stacked them by name, in canonical order
    else:
        for needed in ("W", "R"):
            if needed not in stacked:
                raise ModelFormatError(f"{where} has no '{where}/{needed}'; {DOC}")
        if order is None:
            layer = where.split("/")[0]
            example = "i,f,g,o" if kind == "lstm" else "z,r,n"
            raise ModelFormatError(f"{where} is stacked but no gate order is stated: add 'gate_order' (e.g. "
                                   f"np.array('{example}')) or '{layer}/gate_order'")
        w0 = np.asarray(arrays[stacked["W"]])
        if w0.ndim != 2 or w0.shape[0] % count:
            raise ModelFormatError(f"'{where}/W' has shape {list(w0.shape)}; expected [{count}*hidden, input]")
        hidden, inputs = w0.shape[0] // count, w0.shape[1]
        w = _matrix(arrays, stacked["W"], (count * hidden, inputs))
        r = _matrix(arrays, stacked["R"], (count * hidden, hidden))
        zeros = np.zeros(count * hidden, np.float32)
        b = _matrix(arrays, stacked["b"], (count * hidden,)) if "b" in stacked else zeros
        rb = _matrix(arrays, stacked["rb"], (count * hidden,)) if "rb" in stacked else zeros
    if kind == "lstm":
        return LstmLayer(w_x=_to_canonical(w, order, kind), w_h=_to_canonical(r, order, kind),
                         bias=_to_canonical(b + rb, order, kind), name=name)
    return GruLayer(w_x=_to_canonical(w, order, kind), w_h=_to_canonical(r, order, kind),
                    b_x=_to_canonical(b, order, kind), b_h=_to_canonical(rb, order, kind),
                    linear_before_reset=bool(lbr), name=name)


def _gate_field(field: str, kind: str):
    m = _GATE_FIELD.match(field)
    return m if m and m["gate"] in GATE_LETTERS[kind] else None


def _per_gate(arrays, where: str, per_gate: Dict[str, str], kind: str):
    """The gates of each part by name, stacked in canonical order (i, f, g, o or z, r, n):
    (W, R, b, rb), the biases zero when absent."""
    gates = CANONICAL[kind]
    by_part: Dict[str, Dict[str, str]] = {}
    for f, key in per_gate.items():
        m = _gate_field(f, kind)
        gate = GATE_LETTERS[kind][m["gate"]]
        if gate in by_part.setdefault(m["part"], {}):
            alias = "c" if kind == "lstm" else "h"
            raise ModelFormatError(f"{where} has both {m['part']}_{gate} and {m['part']}_{alias} (the same gate)")
        by_part[m["part"]][gate] = key
    for part in ("W", "R"):
        missing = [g for g in gates if g not in by_part.get(part, {})]
        if missing:
            raise ModelFormatError(f"{where} has no '{where}/{part}_{missing[0]}'; per-gate layers need "
                                   f"{', '.join(f'W_{g}' for g in gates)} and {', '.join(f'R_{g}' for g in gates)}")
    w_first = np.asarray(arrays[by_part["W"][gates[0]]])
    if w_first.ndim != 2:
        raise ModelFormatError(f"'{where}/W_{gates[0]}' has shape {list(w_first.shape)}; expected [hidden, input]")
    hidden, inputs = w_first.shape
    w = np.concatenate([_matrix(arrays, by_part["W"][g], (hidden, inputs)) for g in gates])
    r = np.concatenate([_matrix(arrays, by_part["R"][g], (hidden, hidden)) for g in gates])
    biases = []
    for part in ("b", "rb"):
        if part in by_part:
            missing = [g for g in gates if g not in by_part[part]]
            if missing:
                raise ModelFormatError(f"{where} has {part}_ for some gates but no '{where}/{part}_{missing[0]}'")
            biases.append(np.concatenate([_matrix(arrays, by_part[part][g], (hidden,)) for g in gates]))
        else:
            biases.append(np.zeros(len(gates) * hidden, np.float32))
    return w, r, biases[0], biases[1]


def _build(path: Path, arrays: Dict[str, np.ndarray]) -> FloatModel:
    if "schema" in arrays and _text(arrays["schema"], "'schema'") != SCHEMA:
        raise ModelFormatError(f"schema '{_text(arrays['schema'], 'schema')}' is not {SCHEMA}, the one this "
                               f"version reads")
    groups, kinds = _group(arrays)
    if "sequence_output" not in arrays:
        raise ModelFormatError(f"no 'sequence_output': store np.array(True) for an output every step or "
                               f"np.array(False) for the last step's only; {DOC}")
    sequence_output = _flag(arrays["sequence_output"], "'sequence_output'")
    last_step_from = "final_state"
    if "last_step_from" in arrays:
        last_step_from = _text(arrays["last_step_from"], "'last_step_from'").lower()
        if last_step_from not in LAST_STEP_SOURCES:
            raise ModelFormatError(f"last_step_from '{last_step_from}' is not one of {', '.join(LAST_STEP_SOURCES)}")
        if sequence_output:
            raise ModelFormatError("'last_step_from' applies only with sequence_output=False")
    default_orders = _default_orders(arrays["gate_order"]) if "gate_order" in arrays else {}
    stack, width = StackBuilder(), None
    dense_count = sum(1 for (kind, _) in groups if kind == "dense")
    if not kinds:
        raise ModelFormatError(f"no recurrent layer (lstm0/... or gru0/...); {DOC}")
    for k, kind in enumerate(kinds):
        layer = _recurrent_layer(arrays, kind, k, groups[(kind, k)], default_orders, width)
        stack.add_lstm(layer, f"{kind}{k}")
        width = layer.hidden_size
    if not sequence_output:
        stack.keep_last_step(f"sequence_output=false (last_step_from={last_step_from})", last_step_from)
    for d in range(dense_count):
        fields, where = groups[("dense", d)], f"dense{d}"
        unknown = sorted(set(fields) - set(DENSE_FIELDS))
        if unknown:
            raise ModelFormatError(f"unknown key '{where}/{unknown[0]}'; a dense layer has W, b, activation")
        if "W" not in fields:
            raise ModelFormatError(f"{where} has no '{where}/W' [out, in]")
        w0 = np.asarray(arrays[fields["W"]])
        if w0.ndim != 2 or w0.shape[1] != width:
            raise ModelFormatError(f"'{where}/W' has shape {list(w0.shape)}; expected [out, {width}] "
                                   f"(W is [out, in]: y = W @ x + b)")
        w = _matrix(arrays, fields["W"], w0.shape)
        b = _matrix(arrays, fields["b"], (w.shape[0],)) if "b" in fields else None
        activation = _text(arrays[fields["activation"]], f"'{where}/activation'") if "activation" in fields else None
        stack.add_dense(w, b, activation, where, where)
        width = w.shape[0]
    if "final_softmax" in arrays:
        final = _text(arrays["final_softmax"], "'final_softmax'").lower()
        if final not in ("none", "softmax", "log_softmax", "logsoftmax"):
            raise ModelFormatError(f"final_softmax '{final}' is not one of none, softmax, log_softmax")
        if final != "none":
            stack.add_activation(final, "final_softmax")
    name = _text(arrays["name"], "'name'") if "name" in arrays else path.stem
    return stack.build(name=name, source=str(path), what="the file")
