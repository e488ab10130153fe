"""PyTorch state_dict + architecture description -> float IR, without torch and without running
user code.

The weights come from a file written by `torch.save(model.state_dict(), path)`. Files in torch's
zip format (every torch.save since PyTorch 1.6) are read by torch_zip, a restricted unpickler
that knows tensors and plain containers only: torch need not be installed. Files in the legacy
(pre-1.6) format are read with `torch.load(..., weights_only=True)` when torch is installed.
What the tensors are comes from the `arch` description (torch_arch, docs/pytorch-arch.md),
because a state_dict holds no architecture.

An `lstm` stage reads an nn.LSTM's weight_ih_l{k} [4H, I], weight_hh_l{k} [4H, H] and
bias_ih_l{k} + bias_hh_l{k} (gate order i, f, g, o); a `gru` stage an nn.GRU's weight_ih_l{k}
[3H, I], weight_hh_l{k} [3H, H], bias_ih_l{k} and bias_hh_l{k} kept apart (gate order r, z, n;
PyTorch's GRU is ONNX's linear_before_reset=1); with bidirectional=True also the `_reverse`
tensors of the backward direction, whose layers k > 0 read the concatenated [forward, backward]
output (2H wide). `last` is out[:, -1] (FloatModel.last_step_from="last_index"), `final` is h_n
of each direction ("final_state"). A `linear` stage reads an nn.Linear's weight [out, in] and
bias. A stage finds its tensors under `name=` (the module's path in the model, e.g.
`encoder.lstm`), or else takes the next module of its kind (recurrent or linear) in the
state_dict's order. Every tensor must be used by some stage. Refused: proj_size LSTMs, nn.RNN.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..errors import ModelFormatError, UnsupportedModelError
from ..ir import BidirectionalLayer, FloatModel, GruLayer, LstmLayer, to_canonical_gate_order
from .layer_stack import StackBuilder
from .torch_arch import DOC, Stage, load_arch
from .torch_zip import EXPORT_HINT, is_legacy_torch_file, is_torch_zip, load_torch_zip

CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")
_RNN_KEY = re.compile(r"^(?:(?P<prefix>.+)\.)?(?P<param>weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)"
                      r"_l(?P<layer>\d+)(?P<reverse>_reverse)?$")
# rows of weight_hh per hidden unit -> the module
GATES = {4: "lstm", 3: "gru", 1: "rnn"}
MODULE_NAMES = {"lstm": "nn.LSTM", "gru": "nn.GRU", "rnn": "nn.RNN"}


def load_torch(path, arch=None) -> FloatModel:
    """Import a state_dict file; `arch` describes the model (string, file name, or parsed list)."""
    path = Path(path)
    if arch is None:
        raise ModelFormatError(f"'{path}' is a PyTorch state_dict, which holds only weights: describe the "
                               f"architecture with --arch (library: arch=...), e.g. \"lstm(input=12, hidden=32) "
                               f"-> last -> linear(32, 3)\"; {DOC}")
    stages = load_arch(arch)  # parse first: a malformed arch is reported before the file is read
    tensors = read_state_dict(path)
    notes = []
    try:
        return _Binder(tensors, notes).build(stages, path)
    except (UnsupportedModelError, ModelFormatError) as exc:
        raise type(exc)(f"'{path}': {exc}") from None


def read_state_dict(path: Path) -> Dict[str, np.ndarray]:
    """The file's tensors as float32 numpy arrays, by state_dict key."""
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"model file '{path}' not found")
    if _is_torchscript(path):
        raise ModelFormatError(f"'{path}' is a TorchScript archive (torch.jit.save), not a state_dict; save "
                               f"model.state_dict() with torch.save, or export the model to ONNX")
    if is_torch_zip(path):
        obj = load_torch_zip(path)
    elif is_legacy_torch_file(path):
        obj = _load_legacy(path)
    else:
        raise ModelFormatError(f"'{path}' is not a PyTorch file: neither torch.save's zip format nor its legacy "
                               f"format")
    state = _find_state_dict(path, obj)
    return {key: np.asarray(value, dtype=np.float32) for key, value in state.items()}


def _load_legacy(path: Path):
    """A legacy-format file (torch.save before PyTorch 1.6, or _use_new_zipfile_serialization=False):
    read with torch.load(weights_only=True), the tensors turned into numpy arrays."""
    try:
        import torch
    except ImportError:
        raise UnsupportedModelError(
            f"'{path}' is in torch.save's legacy (pre-1.6, non-zip) format, which lstm-edge reads only with "
            f"torch installed (pip install torch); re-save it with torch.save from PyTorch 1.6 or later (the zip "
            f"format needs no torch), or export the model to ONNX") from None
    try:
        with warnings.catch_warnings():  # the CLI prints one line per problem, not torch's warnings
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for pickled objects, RuntimeError for a damaged file, ...
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text:
            raise ModelFormatError(f"'{path}' is not a plain state_dict: it holds pickled Python objects (a whole "
                                   f"nn.Module?), and lstm-edge runs no code from model files; "
                                   f"{EXPORT_HINT}") from None
        first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
        raise ModelFormatError(f"'{path}' is not a readable PyTorch file ({first})") from None

    def to_numpy(value):
        if isinstance(value, torch.Tensor):
            return value.detach().to(torch.float32).cpu().numpy()
        if isinstance(value, dict):
            return {k: to_numpy(v) for k, v in value.items()}
        return value

    return to_numpy(obj)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zips like torch.save's, plus a code/ folder and constants.pkl."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _find_state_dict(path: Path, obj) -> Mapping:
    def all_tensors(m):
        return isinstance(m, Mapping) and m and all(isinstance(k, str) and isinstance(v, np.ndarray)
                                                    for k, v in m.items())

    if all_tensors(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in CHECKPOINT_KEYS:
            if all_tensors(obj.get(key)):
                return obj[key]
        keys = ", ".join(map(str, list(obj)[:6]))
        raise ModelFormatError(f"'{path}' is a dict ({keys}) but not a state_dict of tensors, and has none "
                               f"under {', '.join(CHECKPOINT_KEYS)}")
    raise ModelFormatError(f"'{path}' holds a {type(obj).__name__}, not a state_dict; save model.state_dict()")


def _full(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _module(prefix: str) -> str:
    return f"module '{prefix}'" if prefix else "the top-level module"


def _shape(a: np.ndarray) -> str:
    return str(list(a.shape))


class _Binder:
    """Matches the arch stages with the state_dict tensors, in order, and builds the model."""

    def __init__(self, tensors: Dict[str, np.ndarray], notes: List[str]):
        self.tensors, self.notes = tensors, notes
        self.used: set = set()
        self.recurrent_prefixes = self._modules_of("recurrent")
        self.linear_prefixes = self._modules_of("linear")
        self.taken = {"recurrent": 0, "linear": 0}
        self.time_major_noted = False

    def _modules_of(self, kind: str) -> List[str]:
        """Module prefixes in state_dict order: recurrent modules (weight_ih_l0) or linear ones (2-D weight)."""
        found: List[str] = []
        for key, value in self.tensors.items():
            m = _RNN_KEY.match(key)
            if kind == "recurrent" and m and m.group("param") == "weight_ih" and m.group("layer") == "0" \
                    and not m.group("reverse"):
                found.append(m.group("prefix") or "")
            elif kind == "linear" and not m and (key == "weight" or key.endswith(".weight")) and value.ndim == 2:
                found.append(key[:-len("weight")].rstrip("."))
        return found

    def take(self, key: str, stage: Stage, expected=None) -> np.ndarray:
        if key not in self.tensors:
            raise ModelFormatError(f"arch {stage.label}: the state_dict has no tensor '{key}'")
        value = self.tensors[key]
        if expected is not None and tuple(value.shape) != tuple(expected):
            raise ModelFormatError(f"arch {stage.label}: tensor '{key}' has shape {_shape(value)}, "
                                   f"expected {list(expected)}")
        if not np.all(np.isfinite(value)):
            raise ModelFormatError(f"tensor '{key}' contains NaN or Inf")
        self.used.add(key)
        return value

    def prefix_for(self, stage: Stage, kind: str) -> str:
        if "name" in stage.args:
            return str(stage.args["name"])
        candidates = self.recurrent_prefixes if kind == "recurrent" else self.linear_prefixes
        k = self.taken[kind]
        self.taken[kind] += 1
        if k >= len(candidates):
            what = "recurrent (nn.LSTM / nn.GRU)" if kind == "recurrent" else "nn.Linear"
            stages = "lstm/gru" if kind == "recurrent" else "linear"
            raise ModelFormatError(f"arch {stage.label}: the state_dict has only {len(candidates)} {what} "
                                   f"module(s) for {k + 1} {stages} stage(s)")
        return candidates[k]

    # --- stages --------------------------------------------------------------------------

    def build(self, stages: List[Stage], path: Path) -> FloatModel:
        stack = StackBuilder()
        width: Optional[int] = None
        previous = ""  # the kind of the last stage that does something at inference
        for stage in stages:
            where = f"arch {stage.label}"
            if stage.kind in ("lstm", "gru"):
                layers = self.recurrent_stage(stage, width)
                for layer in layers:
                    stack.add_lstm(layer, where)
                width = layers[-1].hidden_size
            elif stage.kind == "linear":
                w, b, name = self.linear_stage(stage, width)
                stack.add_dense(w, b, None, where, name)
                width = w.shape[0]
            elif stage.kind == "last":
                stack.keep_last_step(where, "last_index")
            elif stage.kind == "final":
                if previous not in ("lstm", "gru"):
                    raise UnsupportedModelError(f"{where}: final (h_n) takes the final state of the recurrent "
                                                f"layer just before it; put it right after the last lstm or gru "
                                                f"stage (or use last, out[:, -1])")
                stack.keep_last_step(where, "final_state")
            elif stage.kind in ("softmax", "log_softmax"):
                self.check_dim(stage, stack)
                stack.add_activation(stage.kind, where)
            elif stage.kind in ("relu", "tanh", "sigmoid"):
                stack.add_activation(stage.kind, where)
            if stage.kind not in ("dropout", "identity"):  # nothing at inference
                previous = stage.kind
        unused = [key for key in self.tensors if key not in self.used]
        if unused:
            shown = ", ".join(f"'{k}' {_shape(self.tensors[k])}" for k in unused[:5])
            more = f" and {len(unused) - 5} more" if len(unused) > 5 else ""
            raise ModelFormatError(f"state_dict tensors not used by the arch: {shown}{more}; describe every "
                                   f"layer of the model (or name the modules with name=...)")
        return stack.build(name=path.stem, source=str(path), notes=self.notes, what="the arch")

    def module_kind(self, stage: Stage, prefix: str, params) -> str:
        """'lstm' or 'gru' from the tensors; refuses what no stage reads and a stage of the wrong kind."""
        first_r = self.tensors.get(_full(prefix, "weight_hh_l0"))
        if first_r is None or first_r.ndim != 2 or first_r.shape[1] == 0:
            raise ModelFormatError(f"arch {stage.label}: the state_dict has no 2-D "
                                   f"'{_full(prefix, 'weight_hh_l0')}'")
        if any(p == "weight_hr" for (p, _, _) in params):
            raise UnsupportedModelError(f"arch {stage.label}: {_module(prefix)} is an LSTM with proj_size (it has "
                                        f"'{_full(prefix, 'weight_hr_l0')}'); proj_size is not supported yet")
        rows, hidden = first_r.shape
        kind = GATES.get(rows // hidden) if rows % hidden == 0 else None
        if kind is None:
            raise ModelFormatError(f"arch {stage.label}: '{_full(prefix, 'weight_hh_l0')}' has shape "
                                   f"{_shape(first_r)}, not 4 (LSTM) or 3 (GRU) gates of [hidden, hidden]")
        if kind == "rnn":
            raise UnsupportedModelError(f"arch {stage.label}: {_module(prefix)} is an nn.RNN ('weight_hh_l0' "
                                        f"{_shape(first_r)}, one gate); simple RNN layers are not supported yet")
        if kind != stage.kind:
            gates = 4 if kind == "lstm" else 3
            raise ModelFormatError(f"arch {stage.label}: '{_full(prefix, 'weight_hh_l0')}' has shape "
                                   f"{_shape(first_r)}, {gates} gates: {_module(prefix)} is an "
                                   f"{MODULE_NAMES[kind]}; write a {kind} stage for it")
        return kind

    def recurrent_stage(self, stage: Stage, width: Optional[int]) -> list:
        """The layers of one nn.LSTM / nn.GRU module (proj_size was refused by the parser)."""
        a, kind = stage.args, stage.kind
        prefix = self.prefix_for(stage, "recurrent")
        params = self._recurrent_params(prefix)
        if not params:
            raise ModelFormatError(f"arch {stage.label}: the state_dict has no {MODULE_NAMES[kind]} tensors for "
                                   f"{_module(prefix)} (no '{_full(prefix, 'weight_ih_l0')}')")
        self.module_kind(stage, prefix, params)
        gates = 4 if kind == "lstm" else 3
        has_reverse = any(rev for (_, _, rev) in params)
        bidirectional = a.get("bidirectional", has_reverse)
        if bidirectional != has_reverse:
            found = (f"it has '{_full(prefix, 'weight_ih_l0_reverse')}'" if has_reverse
                     else f"it has no '{_full(prefix, 'weight_ih_l0_reverse')}'")
            raise ModelFormatError(f"arch {stage.label}: the arch says bidirectional={str(bidirectional).lower()}, "
                                   f"but {_module(prefix)} is {'' if has_reverse else 'not '}bidirectional ({found})")
        present = sorted({k for (_, k, _) in params})
        count = a.get("layers", len(present))
        if present != list(range(len(present))) or len(present) != count:
            raise ModelFormatError(f"arch {stage.label}: the state_dict has layers {present} for "
                                   f"{_module(prefix)}, the arch says layers={count}")
        first_w = self.tensors.get(_full(prefix, "weight_ih_l0"))
        hidden = a.get("hidden", self.tensors[_full(prefix, "weight_hh_l0")].shape[1])
        input_size = a.get("input", width if width is not None else (
            first_w.shape[1] if first_w is not None and first_w.ndim == 2 else None))
        if width is not None and input_size != width:
            raise ModelFormatError(f"arch {stage.label}: input={input_size}, but the stage before outputs {width}")
        has_bias = a.get("bias", _full(prefix, "bias_ih_l0") in self.tensors)
        directions = ("", "_reverse") if bidirectional else ("",)
        base = prefix or kind
        layers = []
        for k in range(count):
            inputs = input_size if k == 0 else hidden * len(directions)
            name = _full(prefix, f"l{k}") if count > 1 else base
            parts = []
            for suffix in directions:
                def tensor(param, shape):
                    return self.take(_full(prefix, f"{param}_l{k}{suffix}"), stage, shape)

                w = tensor("weight_ih", (gates * hidden, inputs))
                r = tensor("weight_hh", (gates * hidden, hidden))
                if has_bias:
                    b_x, b_h = tensor("bias_ih", (gates * hidden,)), tensor("bias_hh", (gates * hidden,))
                else:
                    b_x = b_h = np.zeros(gates * hidden, np.float32)
                part_name = f"{name}{'.backward' if suffix else '.forward'}" if bidirectional else name
                if kind == "lstm":  # i, f, g, o; one bias
                    parts.append(LstmLayer(w_x=to_canonical_gate_order(w, "pytorch"),
                                           w_h=to_canonical_gate_order(r, "pytorch"),
                                           bias=to_canonical_gate_order(b_x + b_h, "pytorch"), name=part_name))
                else:  # r, z, n; the recurrent bias of n sits inside r * (W_hn h + b_hn)
                    parts.append(GruLayer(w_x=to_canonical_gate_order(w, "pytorch", cell="gru"),
                                          w_h=to_canonical_gate_order(r, "pytorch", cell="gru"),
                                          b_x=to_canonical_gate_order(b_x, "pytorch", cell="gru"),
                                          b_h=to_canonical_gate_order(b_h, "pytorch", cell="gru"),
                                          linear_before_reset=True, name=part_name))
            layers.append(BidirectionalLayer(parts[0], parts[1], merge="concat", name=name) if bidirectional
                          else parts[0])
        if not a.get("batch_first") and not self.time_major_noted:
            self.time_major_noted = True
            self.notes.append(f"the PyTorch model is time-major (batch_first=false, the {MODULE_NAMES[kind]} "
                              f"default); lstm-edge data files are batch-first [N, T, F] all the same")
        return layers

    def _recurrent_params(self, prefix: str):
        found = []
        for key in self.tensors:
            m = _RNN_KEY.match(key)
            if m and (m.group("prefix") or "") == prefix:
                found.append((m.group("param"), int(m.group("layer")), bool(m.group("reverse"))))
        return found

    def linear_stage(self, stage: Stage, width: Optional[int]):
        a = stage.args
        prefix = self.prefix_for(stage, "linear")
        key = _full(prefix, "weight")
        if key not in self.tensors:
            raise ModelFormatError(f"arch {stage.label}: the state_dict has no tensor '{key}'")
        actual = self.tensors[key]
        if actual.ndim != 2:
            raise ModelFormatError(f"arch {stage.label}: tensor '{key}' has shape {_shape(actual)}; an nn.Linear "
                                   f"weight is [out, in]")
        out_size, in_size = a.get("out", actual.shape[0]), a.get("in", actual.shape[1])
        if width is not None and in_size != width:
            raise ModelFormatError(f"arch {stage.label}: in={in_size}, but the stage before outputs {width}")
        w = self.take(key, stage, (out_size, in_size))
        bias_key = _full(prefix, "bias")
        has_bias = a.get("bias", bias_key in self.tensors)
        b = self.take(bias_key, stage, (out_size,)) if has_bias else None
        return w, b, prefix or "linear"

    @staticmethod
    def check_dim(stage: Stage, stack: StackBuilder) -> None:
        dim = stage.args.get("dim", -1)
        rank = 3 if stack.sequence else 2
        if dim not in (-1, rank - 1):
            raise UnsupportedModelError(f"arch {stage.label}: {stage.kind} over dim={dim} is not supported; only "
                                        f"over the features (dim=-1, here also dim={rank - 1})")
