"""Keras model files -> float IR, read with h5py, zipfile and json; Keras itself is never imported
and no user code runs.

Two containers:

- `.keras` (Keras 3): a zip holding config.json (the architecture) and model.weights.h5. The
  weights are stored under `layers/<name>/...vars/<k>`, where <name> is the snake_case class
  name made unique by a counter in layer order (`lstm`, `lstm_1`, `dense`, ...), not the user's
  layer name; config.json gives the class of every layer in that order, so the names are
  rebuilt from it.
- legacy `.h5` / `.hdf5` (Keras 2 and Keras 3's `model.save("x.h5")`): the JSON architecture is
  the root attribute `model_config`, the weights sit in `model_weights/<layer name>`, listed by
  that group's `weight_names` attribute.

Read: Sequential models and Functional models that are a simple chain; InputLayer, LSTM and GRU
(tanh / sigmoid, with or without bias, return_sequences, stateful; GRU with reset_after true or
false), Bidirectional around an LSTM or GRU (merge_mode "concat" or "sum"), Dense (linear, relu,
tanh, sigmoid; softmax / log_softmax on the last one), and the layers that do nothing at
inference (Dropout and friends). Everything else is refused with one line naming the layer.

Gate orders: a Keras LSTM stacks i, f, c, o and a Keras GRU z, r, h along the last axis of
kernel [I, G*H] and recurrent_kernel [H, G*H]. A GRU with reset_after=True has a [2, 3H] bias
(row 0 the input bias, row 1 the recurrent bias: ONNX linear_before_reset=1); with
reset_after=False one [3H] input bias (linear_before_reset=0). A Bidirectional stores its two
layers under forward_layer/ and backward_layer/ (.keras) or forward_<name>/ and backward_<name>/
(.h5 weight names); the backward layer runs with go_backwards=True and, with return_sequences,
its output is flipped back to input time, as BidirectionalLayer defines it. return_sequences=False
takes each direction's final state (FloatModel.last_step_from="final_state").
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import ModelFormatError, UnsupportedModelError
from ..ir import BidirectionalLayer, FloatModel, GruLayer, LstmLayer, to_canonical_gate_order
from .layer_stack import StackBuilder

# Identity at inference time.
INFERENCE_NOOPS = {"Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
                   "ActivityRegularization"}
RECURRENT = ("LSTM", "GRU")
BIDIRECTIONAL_MERGES = ("concat", "sum")
NOT_YET = {
    "SimpleRNN": "SimpleRNN layers are not supported yet",
    "RNN": "generic RNN layers (an RNN wrapping a cell) are not supported yet; use keras.layers.LSTM",
    "ConvLSTM1D": "ConvLSTM layers are not supported",
    "ConvLSTM2D": "ConvLSTM layers are not supported",
    "TimeDistributed": "TimeDistributed is not supported yet; a Dense on a sequence already acts per step",
    "Masking": ("Masking is not supported: masked steps must be skipped per sequence (state carried "
                "over), which the compiled streaming model does not do; remove the Masking layer and feed "
                "sequences without padding"),
}
MODEL_CLASSES = {"Sequential", "Functional", "Model"}


@dataclass
class KerasLayer:
    class_name: str
    config: dict
    name: str
    store_name: str  # the weight group name in a .keras file


def load_keras(path) -> FloatModel:
    """Import a `.keras` or legacy `.h5`/`.hdf5` Keras model file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"model file '{path}' not found")
    h5py = _h5py()
    if path.suffix.lower() == ".keras":
        config, weights = _read_keras_zip(path, h5py)
    else:
        config, weights = _read_legacy_h5(path, h5py)
    try:
        return _build(path, config, weights)
    except (UnsupportedModelError, ModelFormatError) as exc:  # name the file once, in front
        raise type(exc)(f"'{path}': {exc}") from None


def _h5py():
    try:
        import h5py
    except ImportError:
        raise UnsupportedModelError("reading Keras files needs the h5py package: pip install h5py") from None
    return h5py


# --- reading the containers ----------------------------------------------------------------

class WeightStore:
    """Arrays of each layer, in Keras's own variable order (kernel, recurrent_kernel, bias), each
    with its path inside the layer's group (.keras: "forward_layer/cell/vars/0") or its weight
    name (.h5: "model/bi/forward_lstm/lstm_cell/kernel").

    keyed_by: "store_name" (.keras: the rebuilt group names) or "name" (.h5: the user's names).
    recorded_names: for .keras files that record it, the user's layer name of each group."""

    def __init__(self, arrays: Dict[str, List[Tuple[str, np.ndarray]]], keyed_by: str,
                 recorded_names: Optional[Dict[str, str]] = None):
        self.arrays, self.keyed_by, self.recorded_names = arrays, keyed_by, recorded_names or {}

    def get(self, layer: KerasLayer, part: Optional[str] = None, inner_name: str = "") -> List[np.ndarray]:
        """All arrays of the layer, or with `part` ("forward" / "backward") those of one direction
        of a Bidirectional: the path component `forward_layer` (.keras), the wrapped layer's own
        name (`inner_name`, .h5), else any component `forward_...`."""
        key = layer.store_name if self.keyed_by == "store_name" else layer.name
        entries = self.arrays.get(key, [])
        if part is None:
            return [a for _, a in entries]
        parts = [(path.split("/"), a) for path, a in entries]
        for match in (lambda c: c == f"{part}_layer", lambda c: bool(inner_name) and c == inner_name,
                      lambda c: c.startswith(f"{part}_")):
            found = [a for comps, a in parts if any(match(c) for c in comps)]
            if found:
                return found
        return []


def _read_keras_zip(path: Path, h5py):
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "config.json" not in names:
                raise ModelFormatError(f"'{path}' has no config.json; not a Keras 3 .keras file")
            config = _parse_json(zf.read("config.json"), f"'{path}': config.json")
            if "model.weights.h5" not in names:
                raise ModelFormatError(f"'{path}' has no model.weights.h5 (saved without weights?)")
            blob = zf.read("model.weights.h5")
    except zipfile.BadZipFile:
        raise ModelFormatError(f"'{path}' is not a zip file; a .keras file is a zip of config.json and "
                               f"model.weights.h5") from None
    arrays: Dict[str, List[Tuple[str, np.ndarray]]] = {}
    vars_names: Dict[str, str] = {}
    try:
        with h5py.File(io.BytesIO(blob), "r") as f:
            layers = f.get("layers")
            if layers is None:
                raise ModelFormatError(f"'{path}': model.weights.h5 has no 'layers' group")
            for store_name, group in layers.items():
                arrays[store_name] = _vars_arrays(group)
                if "vars" in group and "name" in group["vars"].attrs:
                    vars_names[store_name] = _text(group["vars"].attrs["name"])
    except OSError as exc:
        raise ModelFormatError(f"'{path}': model.weights.h5 is unreadable ({exc})") from None
    return config, WeightStore(arrays, "store_name", vars_names)


def _vars_arrays(group) -> List[Tuple[str, np.ndarray]]:
    """The variables of one layer with their paths in its group: its own `vars/0..n`, then those
    of its sub-objects (an LSTM keeps them in `cell/vars`, a Bidirectional in
    `backward_layer/cell/vars` and `forward_layer/cell/vars`)."""
    found = []

    def visit(g, prefix: str):
        if "vars" in g:
            v = g["vars"]
            keys = sorted((k for k in v.keys() if k.isdigit()), key=int)
            found.extend((f"{prefix}vars/{k}", np.asarray(v[k][()])) for k in keys)
        for key in sorted(g.keys()):
            if key != "vars" and hasattr(g[key], "keys"):
                visit(g[key], f"{prefix}{key}/")

    visit(group, "")
    return found


def _read_legacy_h5(path: Path, h5py):
    try:
        with h5py.File(path, "r") as f:
            if "model_config" not in f.attrs:
                raise ModelFormatError(f"'{path}' holds no model architecture (saved with save_weights?); "
                                       f"save the whole model with model.save()")
            config = _parse_json(f.attrs["model_config"], f"'{path}': model_config")
            root = f["model_weights"] if "model_weights" in f else f
            arrays = {}
            for name in root.keys():
                group = root[name]
                weight_names = [_text(n) for n in group.attrs.get("weight_names", [])]
                try:
                    arrays[name] = [(n, np.asarray(group[n][()])) for n in weight_names]
                except KeyError as exc:
                    raise ModelFormatError(f"'{path}': layer '{name}' lists a missing weight ({exc})") from None
    except OSError as exc:
        raise ModelFormatError(f"'{path}' is not a readable HDF5 file ({exc})") from None
    return config, WeightStore(arrays, "name")


def _parse_json(raw, what: str) -> dict:
    try:
        value = json.loads(_text(raw))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{what} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ModelFormatError(f"{what} is not a JSON object")
    return value


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value[()])
    return str(value)


# --- the architecture ----------------------------------------------------------------------

def snake_case(name: str) -> str:
    """Keras's own rule for the weight group of a layer class (LSTM -> lstm, InputLayer -> input_layer)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _layer_list(path: Path, config: dict) -> List[dict]:
    cls = config.get("class_name")
    inner = config.get("config")
    if cls not in MODEL_CLASSES:
        raise UnsupportedModelError(
            f"model class '{cls}' is not supported; only Sequential and Functional models can be "
            f"read without running Python code (rebuild the model as one, or export it to ONNX)")
    layers = inner if isinstance(inner, list) else (inner or {}).get("layers")
    if not isinstance(layers, list) or not all(isinstance(l, dict) for l in layers):
        raise ModelFormatError("the model config has no list of layers")
    return layers


def _keras_layers(path: Path, config: dict) -> List[KerasLayer]:
    """All layers in config order, with the weight group names a .keras file gives them."""
    counts: Dict[str, int] = {}
    result = []
    for entry in _layer_list(path, config):
        cls = str(entry.get("class_name"))
        cfg = entry.get("config") if isinstance(entry.get("config"), dict) else {}
        name = str(entry.get("name") or cfg.get("name") or cls)
        base = snake_case(cls)
        store = base if base not in counts else f"{base}_{counts[base] + 1}"
        counts[base] = counts[base] + 1 if base in counts else 0
        result.append(KerasLayer(cls, cfg, name, store))
    return result


def _inbound_names(entry: dict) -> List[List[str]]:
    """Per call of the layer, the names of the layers whose outputs it reads (Keras 2 and 3 forms)."""
    calls = []
    for node in entry.get("inbound_nodes") or []:
        names: List[str] = []
        if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}} with keras_history
            _collect_history(node, names)
        elif isinstance(node, list):  # Keras 2: [[name, node_index, tensor_index, kwargs], ...]
            for item in node:
                if isinstance(item, list) and item and isinstance(item[0], str):
                    names.append(item[0])
        calls.append(names)
    return calls


def _collect_history(value, names: List[str]) -> None:
    if isinstance(value, dict):
        history = value.get("keras_history")
        if isinstance(history, list) and history:
            names.append(str(history[0]))
            return
        for v in value.values():
            _collect_history(v, names)
    elif isinstance(value, list):
        for v in value:
            _collect_history(v, names)


def _endpoints(path: Path, inner: dict, key: str) -> str:
    value = inner.get(key)
    if isinstance(value, list) and value and isinstance(value[0], str):
        value = [value]
    if not isinstance(value, list) or len(value) != 1:
        count = len(value) if isinstance(value, list) else 0
        raise UnsupportedModelError(f"the model has {count} {key.split('_')[0]}s; only models with "
                                    f"one input and one output are supported")
    return str(value[0][0])


def _chain(path: Path, config: dict, layers: List[KerasLayer]) -> List[KerasLayer]:
    """The layers in data-flow order: as listed for Sequential, followed input to output for Functional."""
    if config.get("class_name") == "Sequential":
        return layers
    inner = config.get("config") or {}
    entries = {str(e.get("name")): e for e in _layer_list(path, config)}
    by_name = {l.name: l for l in layers}
    source, sink = _endpoints(path, inner, "input_layers"), _endpoints(path, inner, "output_layers")
    chain, current, seen = [], sink, set()
    while True:
        if current not in by_name or current in seen:
            raise ModelFormatError(f"the model config refers to an unknown layer '{current}'")
        seen.add(current)
        chain.append(by_name[current])
        calls = _inbound_names(entries[current])
        if current == source:
            break
        if len(calls) != 1:
            raise UnsupportedModelError(f"layer '{current}' is called {len(calls)} times; only a "
                                        f"simple chain of layers is supported")
        if len(calls[0]) != 1:
            raise UnsupportedModelError(f"layer '{current}' takes {len(calls[0])} inputs; only a "
                                        f"simple chain of layers, each reading the one before, is supported")
        current = calls[0][0]
    unused = [l.name for l in layers if l.name not in seen]
    if unused:
        raise UnsupportedModelError(f"layers {', '.join(unused)} are not on the path from the input "
                                    f"to the output; only a simple chain of layers is supported")
    return chain[::-1]


# --- layers -> IR --------------------------------------------------------------------------

def _activation_name(value) -> Optional[str]:
    """'relu', or Keras 3's serialized form {"class_name": "function", "config": "relu"}."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        inner = value.get("config")
        return inner if isinstance(inner, str) else str(value.get("class_name"))
    return str(value)


def _where(layer: KerasLayer) -> str:
    return f"layer '{layer.name}' ({layer.class_name})"


def _arrays(where: str, arrays: List[np.ndarray], roles: List[str]) -> Dict[str, np.ndarray]:
    if len(arrays) != len(roles):
        raise ModelFormatError(f"{where}: the weights file holds {len(arrays)} arrays for it, expected "
                               f"{len(roles)} ({', '.join(roles)})")
    return {role: np.asarray(a, dtype=np.float32) for role, a in zip(roles, arrays)}


def _check_shape(where: str, role: str, array: np.ndarray, expected) -> None:
    if tuple(array.shape) != tuple(expected):
        raise ModelFormatError(f"{where}: {role} has shape {list(array.shape)}, expected {list(expected)}")


def _recurrent(cls: str, cfg: dict, arrays: List[np.ndarray], where: str, name: str) -> "LstmLayer | GruLayer":
    """A Keras LSTM or GRU (its config and its arrays) -> the IR layer. Checks what a plain layer
    and each direction of a Bidirectional have in common."""
    act, rec = _activation_name(cfg.get("activation", "tanh")), _activation_name(cfg.get("recurrent_activation",
                                                                                        "sigmoid"))
    if act != "tanh" or rec != "sigmoid":
        raise UnsupportedModelError(f"{where}: activation='{act}', recurrent_activation='{rec}' is not "
                                    f"supported; only activation='tanh' with recurrent_activation='sigmoid'")
    if cfg.get("return_state"):
        raise UnsupportedModelError(f"{where}: return_state=True is not supported; the compiled model has "
                                    f"one output")
    units = cfg.get("units")
    if isinstance(units, bool) or not isinstance(units, int) or units < 1:
        raise ModelFormatError(f"{where}: units={units!r} is not a positive integer")
    gates = 4 if cls == "LSTM" else 3
    use_bias = cfg.get("use_bias", True)
    w = _arrays(where, arrays, ["kernel", "recurrent_kernel"] + (["bias"] if use_bias else []))
    kernel, recurrent = w["kernel"], w["recurrent_kernel"]
    if kernel.ndim != 2:
        raise ModelFormatError(f"{where}: kernel has shape {list(kernel.shape)}, expected [input, {gates * units}]")
    _check_shape(where, "kernel", kernel, (kernel.shape[0], gates * units))
    _check_shape(where, "recurrent_kernel", recurrent, (units, gates * units))
    # Keras stores x @ kernel, i.e. [I, G*H]; the IR wants [G, H, I].
    if cls == "LSTM":  # gates i, f, c, o
        bias = w.get("bias", np.zeros(4 * units, np.float32))
        _check_shape(where, "bias", bias, (4 * units,))
        return LstmLayer(w_x=to_canonical_gate_order(kernel.T, "keras"),
                         w_h=to_canonical_gate_order(recurrent.T, "keras"),
                         bias=to_canonical_gate_order(bias, "keras"), name=name)
    # GRU, gates z, r, h
    bias = w.get("bias")
    reset_after = cfg.get("reset_after")
    if reset_after is None:  # configs older than the option: the shape of the bias tells
        reset_after = bias is not None and bias.ndim == 2
    zeros = np.zeros(3 * units, np.float32)
    if bias is None:
        b_x, b_h = zeros, zeros
    elif reset_after:  # row 0: input bias, row 1: recurrent bias (inside the reset gate's product for h)
        _check_shape(where, "bias (reset_after=True)", bias, (2, 3 * units))
        b_x, b_h = bias[0], bias[1]
    else:  # one input bias; the candidate's recurrent product comes after the reset gate
        _check_shape(where, "bias (reset_after=False)", bias, (3 * units,))
        b_x, b_h = bias, zeros
    return GruLayer(w_x=to_canonical_gate_order(kernel.T, "keras", cell="gru"),
                    w_h=to_canonical_gate_order(recurrent.T, "keras", cell="gru"),
                    b_x=to_canonical_gate_order(b_x, "keras", cell="gru"),
                    b_h=to_canonical_gate_order(b_h, "keras", cell="gru"),
                    linear_before_reset=bool(reset_after), name=name)


def _plain_recurrent(layer: KerasLayer, weights: WeightStore, notes: List[str]) -> "LstmLayer | GruLayer":
    cfg, where = layer.config, _where(layer)
    if cfg.get("go_backwards"):
        raise UnsupportedModelError(f"{where}: go_backwards=True (a reverse-only layer) is not supported; wrap "
                                    f"the layer in Bidirectional, or let it run forward")
    if cfg.get("stateful"):
        notes.append(f"{where} is stateful: the compiled step()/run() keep the state between calls the "
                     f"same way; call NAME_reset() where Keras would call reset_states()")
    if cfg.get("time_major"):
        notes.append(f"{where} is time-major in Keras; lstm-edge data files are batch-first [N, T, F]")
    return _recurrent(layer.class_name, cfg, weights.get(layer), where, layer.name)


def _bidirectional(layer: KerasLayer, weights: WeightStore) -> Tuple[BidirectionalLayer, dict]:
    """A Bidirectional wrapper -> (the IR layer, the forward layer's config)."""
    cfg, where = layer.config, _where(layer)
    merge = cfg.get("merge_mode", "concat")
    if merge not in BIDIRECTIONAL_MERGES:
        why = " (it returns the two directions as two outputs)" if merge is None else ""
        raise UnsupportedModelError(f"{where}: merge_mode={merge!r}{why} is not supported; only 'concat' and "
                                    f"'sum'")
    inner = cfg.get("layer") if isinstance(cfg.get("layer"), dict) else {}
    cls = inner.get("class_name")
    if cls not in RECURRENT:
        raise UnsupportedModelError(f"{where}: Bidirectional around {cls or 'an unknown layer'} is not supported; "
                                    f"only around LSTM or GRU")
    fwd = inner.get("config") if isinstance(inner.get("config"), dict) else {}
    back = cfg.get("backward_layer")
    if isinstance(back, dict):
        bcls, bwd = back.get("class_name"), back.get("config") if isinstance(back.get("config"), dict) else {}
    else:  # configs without it: the backward layer is the forward one's copy, run backwards
        bcls, bwd = cls, dict(fwd, go_backwards=not fwd.get("go_backwards", False),
                              name=f"backward_{fwd.get('name', cls.lower())}")
    if bcls != cls:
        raise UnsupportedModelError(f"{where}: the backward layer is a {bcls}, the forward one a {cls}; both "
                                    f"directions must be the same kind")
    if fwd.get("go_backwards") or not bwd.get("go_backwards"):
        raise UnsupportedModelError(f"{where}: only a forward layer with a go_backwards=True backward layer is "
                                    f"supported (found go_backwards={bool(fwd.get('go_backwards'))} and "
                                    f"{bool(bwd.get('go_backwards'))})")
    for key in ("units", "return_sequences", "reset_after", "use_bias"):
        if fwd.get(key) != bwd.get(key):
            raise UnsupportedModelError(f"{where}: the two directions differ in {key} ({fwd.get(key)!r} and "
                                        f"{bwd.get(key)!r}); both must be alike")
    if fwd.get("stateful") or bwd.get("stateful"):
        raise UnsupportedModelError(f"{where}: stateful=True inside Bidirectional is not supported; a "
                                    f"bidirectional layer reads the whole window at once")
    directions = []
    for part, dcfg in (("forward", fwd), ("backward", bwd)):
        dname = str(dcfg.get("name") or f"{part}_{cls.lower()}")
        directions.append(_recurrent(cls, dcfg, weights.get(layer, part, dname),
                                     f"{where}, {part} layer '{dname}'", dname))
    return BidirectionalLayer(directions[0], directions[1], merge=merge, name=layer.name), fwd


def _dense(layer: KerasLayer, weights: WeightStore, stack: StackBuilder) -> None:
    cfg, where = layer.config, _where(layer)
    use_bias = cfg.get("use_bias", True)
    w = _arrays(where, weights.get(layer), ["kernel"] + (["bias"] if use_bias else []))
    kernel = w["kernel"]
    units = cfg.get("units", kernel.shape[-1] if kernel.ndim else None)
    if kernel.ndim != 2 or kernel.shape[1] != units:
        raise ModelFormatError(f"{where}: kernel has shape {list(kernel.shape)}, expected [input, {units}]")
    if "bias" in w:
        _check_shape(where, "bias", w["bias"], (units,))
    stack.add_dense(kernel.T, w.get("bias"), _activation_name(cfg.get("activation")), where, layer.name)


def _input_features(layer: KerasLayer) -> Optional[int]:
    cfg = layer.config
    shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
    if shape is None:
        return None
    if len(shape) != 3:
        raise UnsupportedModelError(f"{_where(layer)}: input shape {shape} is not a sequence [batch, time, "
                                    f"features]")
    return shape[2]


def _build(path: Path, config: dict, weights: WeightStore) -> FloatModel:
    layers = _keras_layers(path, config)
    _check_store_names(path, layers, weights)
    stack, notes, features, ignored = StackBuilder(), [], None, []
    for layer in _chain(path, config, layers):
        cls, where = layer.class_name, _where(layer)
        if cls == "InputLayer":
            features = _input_features(layer)
        elif cls in INFERENCE_NOOPS:
            ignored.append(layer.name)
        elif cls in RECURRENT or cls == "Bidirectional":
            if cls == "Bidirectional":
                recurrent, rcfg = _bidirectional(layer, weights)
            else:
                recurrent, rcfg = _plain_recurrent(layer, weights, notes), layer.config
            if features is not None and not stack.lstm and features != recurrent.input_size:
                raise ModelFormatError(f"{where}: kernel expects {recurrent.input_size} input features, the input "
                                       f"has {features}")
            if rcfg.get("dropout") or rcfg.get("recurrent_dropout"):
                ignored.append(f"the dropout of {layer.name}")
            stack.add_lstm(recurrent, where)
            if not rcfg.get("return_sequences", False):
                stack.keep_last_step(where, "final_state")
        elif cls == "Dense":
            _dense(layer, weights, stack)
        elif cls in NOT_YET:
            raise UnsupportedModelError(f"{where}: {NOT_YET[cls]}")
        elif cls in MODEL_CLASSES:
            raise UnsupportedModelError(f"{where}: nested models are not supported; flatten the "
                                        f"model into one Sequential or Functional model")
        else:
            raise UnsupportedModelError(f"{where}: layer type {cls} is not supported yet; supported: "
                                        f"InputLayer, LSTM, GRU, Bidirectional, Dense, Dropout")
    if ignored:
        notes.append(f"ignored (they act only in training): {', '.join(ignored)}")
    return stack.build(name=path.stem, source=str(path), notes=notes, what="the model")


def _check_store_names(path: Path, layers: List[KerasLayer], weights: WeightStore) -> None:
    """Newer .keras files also record each layer's own name beside its variables: when they do, it
    must agree with the name rebuilt from config.json."""
    for layer in layers:
        got = weights.recorded_names.get(layer.store_name)
        if got is not None and got != layer.name and weights.get(layer):
            raise ModelFormatError(f"weights group '{layer.store_name}' belongs to layer '{got}', "
                                   f"config.json puts '{layer.name}' there")
