"""Keras files, PyTorch state_dicts (+ arch) and plain .npz arrays: every importer case computes
what its framework computed, compiles to C that equals the simulator, and every refused variant
says why in one line. LSTM, GRU (both reset variants) and bidirectional layers, stacked and mixed.

Fixtures: tests/fixtures/keras/ (tests/fixtures/make_keras_fixtures_v3.py, Keras 3.15) and
tests/fixtures/torch_state_dicts/ (tests/fixtures/make_torch_state_dicts.py, torch 2.13); their
stored `y` is the framework's own output. The .npz cases are written here from the Keras
fixtures' weights, read straight from the HDF5 file, with the gate reordering spelled out below.
Nothing here needs torch or Keras: .pt files are read by lstm_edge.importers.torch_zip (run
`python -c "import sys; sys.modules['torch'] = None; ..."` to check that torch stays unused).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from conftest import REPO, require_tool
from lstm_edge.errors import LstmEdgeError, ModelFormatError, QuantizationError, UnsupportedModelError
from lstm_edge.importers import load_model
from lstm_edge.ir import BidirectionalLayer, GruLayer, layer_arrays
from lstm_edge.reference import forward

FIXTURES = REPO / "tests" / "fixtures"
KERAS = FIXTURES / "keras"
TORCH_SD = FIXTURES / "torch_state_dicts"
TOL = 1e-5
C_SEQUENCES = 320


def _io(path: Path):
    with np.load(path) as z:
        return z["x"], z["y"]


def one_line(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message, repr(message)
    return message


def windowed(model) -> bool:
    return any(isinstance(layer, BidirectionalLayer) for layer in model.recurrent_layers)


# --- the npz cases, written from the Keras fixtures' weights --------------------------------

def keras_h5_weights(name: str):
    """[(layer class, {role: array} or {"forward": {...}, "backward": {...}}, config), ...] in file
    order, read with h5py from the legacy .h5 fixture (independently of the importer). A
    Bidirectional's weight names hold forward_<layer> / backward_<layer>."""
    import h5py
    with h5py.File(KERAS / f"{name}.h5", "r") as f:
        config = json.loads(f.attrs["model_config"])
        weights = f["model_weights"]
        layers = []
        for entry in config["config"]["layers"]:
            cls, layer_name = entry["class_name"], entry["config"]["name"]
            if cls not in ("LSTM", "GRU", "Dense", "Bidirectional"):
                continue
            group = weights[layer_name]
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs["weight_names"]]
            if cls == "Bidirectional":
                arrays = {d: {n.split("/")[-1]: np.asarray(group[n]) for n in names if f"/{d}_" in n}
                          for d in ("forward", "backward")}
            else:
                arrays = {n.split("/")[-1]: np.asarray(group[n]) for n in names}
            layers.append((cls, arrays, entry["config"]))
    return layers


def keras_blocks(a: np.ndarray, gates: int):
    """Keras arrays are [.., G*H] in gate order i, f, c, o (LSTM) or z, r, h (GRU): the blocks, each [H, ..]."""
    return np.split(a.T if a.ndim == 2 else a, gates, axis=0)


# Stacked forms: (top-level gate_order or None, per-layer gate_order by kind or None, block order by kind).
STACKED_FORMS = {
    "stacked_keras": (None, {"lstm": "i,f,c,o", "gru": "z,r,h"}, {"lstm": "ifco", "gru": "zrh"}),
    "stacked_onnx": ("onnx", None, {"lstm": "iofc", "gru": "zrh"}),
    "stacked_pytorch": ("pytorch", None, {"lstm": "ifco", "gru": "rzh"}),
    "stacked_perm": (None, {"lstm": "o,c,f,i", "gru": "h,z,r"}, {"lstm": "ocfi", "gru": "hzr"}),
}


def _direction_arrays(kind: str, w: dict, form: str, p: str, cfg: dict) -> dict:
    """One LSTM/GRU direction in `form`, keys under the prefix p ("lstm0/" or "gru1/forward/")."""
    letters = "ifco" if kind == "lstm" else "zrh"
    gates = len(letters)
    blocks = {"W": dict(zip(letters, keras_blocks(w["kernel"], gates))),
              "R": dict(zip(letters, keras_blocks(w["recurrent_kernel"], gates)))}
    bias = w.get("bias")
    if kind == "lstm":  # one bias: split it in two halves to exercise b + rb
        blocks["b"] = {g: v / 2 for g, v in zip(letters, keras_blocks(bias, 4))}
        blocks["rb"] = blocks["b"]
    elif bias.ndim == 2:  # GRU reset_after=True: row 0 input bias, row 1 recurrent bias
        blocks["b"] = dict(zip(letters, keras_blocks(bias[0], 3)))
        blocks["rb"] = dict(zip(letters, keras_blocks(bias[1], 3)))
    else:  # reset_after=False: the input bias only
        blocks["b"] = dict(zip(letters, keras_blocks(bias, 3)))
    out = {}
    if form == "per_gate":  # canonical letters, and the aliases c (= g) and h (= n) for W
        for part, by_gate in blocks.items():
            for g, v in by_gate.items():
                name = g if part == "W" else {"c": "g", "h": "n"}.get(g, g)
                out[f"{p}{part}_{name}"] = v
        return out
    order = STACKED_FORMS[form][2][kind]
    for part, by_gate in blocks.items():
        out[p + part] = np.concatenate([by_gate[g] for g in order])
    return out


def write_npz(path: Path, name: str, form: str) -> Path:
    """`form`: "per_gate" (named gates) or one of STACKED_FORMS (the blocks reordered to that
    order, which is stated per layer or at the top level)."""
    arrays = {}
    k = dense_k = 0
    top_order, layer_orders, _ = STACKED_FORMS.get(form, (None, None, None))
    for cls, w, cfg in keras_h5_weights(name):
        if cls == "Dense":
            p = f"dense{dense_k}/"
            activation = cfg["activation"]
            if activation == "softmax":
                arrays["final_softmax"] = np.array("softmax")
                activation = "linear"
            arrays.update({p + "W": w["kernel"].T, p + "b": w["bias"], p + "activation": np.array(activation)})
            dense_k += 1
            continue
        inner = cfg["layer"]["config"] if cls == "Bidirectional" else cfg
        kind = (cfg["layer"]["class_name"] if cls == "Bidirectional" else cls).lower()
        p = f"{kind}{k}/"
        if cls == "Bidirectional":
            for d in ("forward", "backward"):
                arrays.update(_direction_arrays(kind, w[d], form, f"{p}{d}/", inner))
            arrays[p + "merge"] = np.array(cfg["merge_mode"])
        else:
            arrays.update(_direction_arrays(kind, w, form, p, inner))
        if kind == "gru":
            arrays[p + "linear_before_reset"] = np.array(inner["reset_after"])
        if layer_orders:
            arrays[p + "gate_order"] = np.array(layer_orders[kind])
        k += 1
        sequence_output = inner["return_sequences"]
    if top_order:
        arrays["gate_order"] = np.array(top_order)
    arrays["sequence_output"] = np.array(sequence_output)
    arrays["schema"] = np.array("lstm-edge-npz/1")
    out = path / f"{name}.{form}.npz"
    np.savez(out, **arrays)
    return out


# --- the case table ------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    id: str
    load: Callable  # tmp_path -> FloatModel
    io: Path
    compile_c: bool = True  # one C build per distinct model (not for float-only models)

    def model(self, tmp_path):
        return self.load(tmp_path)


# the integer path refuses merge_mode="sum" (test_keras_sum_merge_is_float_only)
FLOAT_ONLY = ("bidirectional_gru_sum_seq",)


def _keras_case(name: str, suffix: str) -> Case:
    return Case(f"keras-{name}{suffix}", lambda tmp, n=name, s=suffix: load_model(KERAS / f"{n}{s}"),
                KERAS / f"{name}.io.npz", compile_c=suffix == ".keras" and name not in FLOAT_ONLY)


def _torch_case(name: str, arch_file: str, inline: bool = False) -> Case:
    def load(tmp, n=name, a=arch_file):
        arch = (TORCH_SD / a).read_text().strip() if inline else str(TORCH_SD / a)
        return load_model(TORCH_SD / f"{n}.pt", arch=arch)
    return Case(f"torch-{name}", load, TORCH_SD / f"{name}.io.npz")


def _npz_case(name: str, form: str, compile_c: bool = False) -> Case:
    return Case(f"npz-{form}-{name}", lambda tmp, n=name, f=form: load_model(write_npz(tmp, n, f)),
                KERAS / f"{name}.io.npz", compile_c=compile_c)


KERAS_SUPPORTED = ("lstm_last_softmax", "lstm2_relu_dense", "lstm_seq_dense", "lstm_stateful",
                   "gru_reset_after_last", "gru_no_reset_after_seq", "bidirectional_lstm_concat_last",
                   "bidirectional_gru_sum_seq", "bidirectional_stack_lstm")
TORCH_SUPPORTED = (("sd_lstm2_last_mlp", "sd_lstm2_last_mlp.arch", True),
                   ("sd_lstm_seq_logsoftmax", "sd_lstm_seq_logsoftmax.arch.yaml", False),
                   ("sd_two_lstms_softmax", "sd_two_lstms_softmax.arch.json", False),
                   ("sd_gru2_last", "sd_gru2_last.arch", True),
                   ("sd_bilstm_last_index", "sd_bilstm_last_index.arch.yaml", False),
                   ("sd_bigru_hn", "sd_bigru_hn.arch", False),  # an arch file in the one-line form
                   ("sd_bilstm2_seq", "sd_bilstm2_seq.arch.json", False))
CASES = ([_keras_case(n, s) for n in KERAS_SUPPORTED for s in (".keras", ".h5")]
         + [_torch_case(*t) for t in TORCH_SUPPORTED]
         + [_npz_case("lstm2_relu_dense", "per_gate", True), _npz_case("lstm_seq_dense", "stacked_keras"),
            _npz_case("lstm_last_softmax", "stacked_onnx", True),
            _npz_case("gru_reset_after_last", "per_gate"), _npz_case("gru_no_reset_after_seq", "stacked_pytorch"),
            _npz_case("gru_reset_after_last", "stacked_perm"),
            _npz_case("bidirectional_lstm_concat_last", "stacked_onnx"),
            _npz_case("bidirectional_gru_sum_seq", "per_gate"),
            _npz_case("bidirectional_stack_lstm", "stacked_perm"), _npz_case("bidirectional_stack_lstm", "per_gate")])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_reference_matches_framework(case, tmp_path):
    x, y = _io(case.io)
    model = case.model(tmp_path)
    got = forward(model, x)  # (log)softmax applied, like the framework's output
    assert got.shape == y.shape, f"reference {got.shape}, framework {y.shape}"
    np.testing.assert_allclose(got, y, rtol=0, atol=TOL)


@pytest.mark.parametrize("case", [c for c in CASES if c.compile_c], ids=lambda c: c.id)
def test_compiled_c_equals_simulator(case, tmp_path):
    from lstm_edge.bundle import write_bundle
    from lstm_edge.calibration import calibrate
    from lstm_edge.hostbuild import build_harness, run_harness
    from lstm_edge.quantizer import quantize
    from lstm_edge.simulator import simulate

    cc = require_tool("gcc")
    x, _ = _io(case.io)
    model = case.model(tmp_path)
    rng = np.random.default_rng(len(case.id))
    # bidirectional models run over a window: its length is the fixtures' T
    qmodel = quantize(model, calibrate(model, x), name="m", max_steps=x.shape[1] if windowed(model) else 0)
    assert qmodel.streaming == (not windowed(model))
    out = write_bundle(qmodel, tmp_path / "out", model)
    # calibration-like inputs, a wider spread that clips, and the int8 extremes
    spread = np.concatenate([x, 2.5 * rng.normal(0, 1, (C_SEQUENCES - 64, *x.shape[1:])), -x[:16], 4 * x[:16]])
    x_q = qmodel.input_q.quantize(spread.astype(np.float32))
    x_q[-8:] = np.where(rng.random(x_q[-8:].shape) < 0.5, -128, 127)
    assert x_q.shape[0] >= 300
    exe = build_harness(qmodel, out, tmp_path / "build", cc=cc, opt="-O2")
    expected = simulate(qmodel, x_q)
    assert np.array_equal(run_harness(exe, qmodel, x_q, "run"), expected)
    if qmodel.streaming:  # a window model has no step()
        stepped = run_harness(exe, qmodel, x_q, "step")
        assert np.array_equal(stepped if qmodel.sequence_output else stepped[:, -1], expected)
    # the float model written beside the C loads back through load_model (.npz) unchanged
    again = load_model(out / "m.float.npz")
    assert [l.name for l in again.recurrent_layers] == [l.name for l in model.recurrent_layers]
    np.testing.assert_array_equal(forward(again, x[:4]), forward(model, x[:4]))


def test_keras_sum_merge_is_float_only():
    """merge_mode="sum" imports and runs in the float reference; the integer path refuses it."""
    from lstm_edge.calibration import calibrate
    from lstm_edge.quantizer import quantize
    model = load_model(KERAS / "bidirectional_gru_sum_seq.keras")
    assert model.recurrent_layers[0].merge == "sum"
    x, _ = _io(KERAS / "bidirectional_gru_sum_seq.io.npz")
    with pytest.raises(QuantizationError) as info:
        quantize(model, calibrate(model, x), name="m", max_steps=x.shape[1])
    assert "merge mode 'sum'" in one_line(info.value)


def _same_layer(a, b):
    assert type(a) is type(b) and a.name == b.name
    for field in ("merge", "linear_before_reset", "activation"):
        assert getattr(a, field, None) == getattr(b, field, None), field
    arrays = layer_arrays(a) if hasattr(a, "hidden_size") else (a.w, a.b)
    others = layer_arrays(b) if hasattr(b, "hidden_size") else (b.w, b.b)
    for x, y in zip(arrays, others):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", KERAS_SUPPORTED)
def test_keras_and_legacy_h5_give_the_same_model(name):
    a, b = load_model(KERAS / f"{name}.keras"), load_model(KERAS / f"{name}.h5")
    assert (a.sequence_output, a.final_softmax, a.last_step_from, len(a.recurrent_layers), len(a.head)) == (
        b.sequence_output, b.final_softmax, b.last_step_from, len(b.recurrent_layers), len(b.head))
    for la, lb in zip(a.recurrent_layers + a.head, b.recurrent_layers + b.head):
        _same_layer(la, lb)


def test_keras_recurrent_kinds():
    """reset_after picks the GRU variant (and where the recurrent bias goes); Bidirectional keeps
    both directions with the backward one's own weights; return_sequences=False is the final state."""
    after = load_model(KERAS / "gru_reset_after_last.keras").recurrent_layers[0]
    assert isinstance(after, GruLayer) and after.linear_before_reset and np.any(after.b_h)
    before = load_model(KERAS / "gru_no_reset_after_seq.keras").recurrent_layers[0]
    assert isinstance(before, GruLayer) and not before.linear_before_reset and not np.any(before.b_h)
    stack = load_model(KERAS / "bidirectional_stack_lstm.keras")
    kinds = [(type(l).__name__, type(getattr(l, "forward", l)).__name__, l.hidden_size) for l in stack.recurrent_layers]
    assert kinds == [("BidirectionalLayer", "LstmLayer", 12), ("BidirectionalLayer", "GruLayer", 10),
                     ("LstmLayer", "LstmLayer", 7)]
    bi = stack.recurrent_layers[0]
    assert not np.array_equal(bi.forward.w_x, bi.backward.w_x)
    assert (stack.sequence_output, stack.last_step_from) == (False, "final_state")


def test_keras_bidirectional_config_without_backward_layer(tmp_path):
    """Older configs describe only `layer`; the backward layer is then its go_backwards copy."""
    edited = _edit_keras_config(tmp_path, "bidirectional_lstm_concat_last.keras",
                                lambda c: c["config"]["layers"][1]["config"].pop("backward_layer"))
    x, y = _io(KERAS / "bidirectional_lstm_concat_last.io.npz")
    np.testing.assert_allclose(forward(load_model(edited), x), y, rtol=0, atol=TOL)


def test_npz_from_a_pytorch_state_dict(tmp_path):
    """docs/npz-schema.md's example: a PyTorch bidirectional GRU's tensors, stacked in PyTorch's
    gate order, h_n of both directions; and out[:, -1] of a bidirectional LSTM ("last_index")."""
    from lstm_edge.importers.torch_zip import load_torch_zip
    for name, module, kind, layers, last_step_from in (("sd_bigru_hn", "gru", "gru", 2, "final_state"),
                                                       ("sd_bilstm_last_index", "lstm", "lstm", 1, "last_index")):
        sd = load_torch_zip(TORCH_SD / f"{name}.pt")
        arrays = {"sequence_output": np.array(False), "last_step_from": np.array(last_step_from),
                  "gate_order": np.array("pytorch")}
        for k in range(layers):
            if kind == "gru":
                arrays[f"{kind}{k}/linear_before_reset"] = np.array(True)
            for direction, suffix in (("forward", ""), ("backward", "_reverse")):
                p, t = f"{kind}{k}/{direction}/", f"_l{k}{suffix}"
                arrays[p + "W"], arrays[p + "R"] = sd[f"{module}.weight_ih{t}"], sd[f"{module}.weight_hh{t}"]
                arrays[p + "b"], arrays[p + "rb"] = sd[f"{module}.bias_ih{t}"], sd[f"{module}.bias_hh{t}"]
        heads = [k[:-len(".weight")] for k in sd if k.endswith(".weight") and not k.startswith(module)]
        for d, head in enumerate(heads):
            arrays[f"dense{d}/W"], arrays[f"dense{d}/b"] = sd[f"{head}.weight"], sd[f"{head}.bias"]
        if name == "sd_bigru_hn":
            arrays["final_softmax"] = np.array("softmax")
        else:
            arrays["dense0/activation"] = np.array("relu")
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        model = load_model(path)
        assert model.last_step_from == last_step_from
        x, y = _io(TORCH_SD / f"{name}.io.npz")
        np.testing.assert_allclose(forward(model, x), y, rtol=0, atol=TOL)


def test_keras_notes_stateful_and_dropout():
    stateful = load_model(KERAS / "lstm_stateful.keras")
    assert any("stateful" in n and "reset" in n for n in stateful.notes), stateful.notes
    dropout = load_model(KERAS / "lstm2_relu_dense.keras")
    assert any("training" in n for n in dropout.notes), dropout.notes


def test_keras_weight_groups_follow_class_names_not_user_names():
    """lstm_seq_dense names its layers z_recurrent, b_hidden, a_out; the .keras file stores them
    as lstm, dense, dense_1 (the importer rebuilds that from config.json)."""
    with zipfile.ZipFile(KERAS / "lstm_seq_dense.keras") as zf:
        import h5py
        with h5py.File(io.BytesIO(zf.read("model.weights.h5")), "r") as f:
            assert {"lstm", "dense", "dense_1"} <= set(f["layers"].keys())
    model = load_model(KERAS / "lstm_seq_dense.keras")
    assert [d.name for d in model.head] == ["b_hidden", "a_out"]
    assert model.head[0].output_size == 6 and model.head[1].activation.value == "sigmoid"


def test_torch_last_and_final_differ_for_bidirectional():
    """`last` (out[:, -1]) and `final` (h_n of both directions) are different models for a
    bidirectional layer: each fixture matches PyTorch with its own and misses with the other."""
    cases = (("sd_bilstm_last_index", "lstm(6, 10, batch_first=true) -> {} -> linear(20, 5) -> relu -> linear(5, 3)",
              "last", "final"),
             ("sd_bigru_hn", "gru(5, 8, layers=2) -> {} -> linear(16, 4) -> softmax(dim=1)", "final", "last"))
    for name, arch, right, wrong in cases:
        x, y = _io(TORCH_SD / f"{name}.io.npz")
        good = load_model(TORCH_SD / f"{name}.pt", arch=arch.format(right))
        assert good.last_step_from == ("last_index" if right == "last" else "final_state")
        np.testing.assert_allclose(forward(good, x), y, rtol=0, atol=TOL)
        bad = forward(load_model(TORCH_SD / f"{name}.pt", arch=arch.format(wrong)), x)
        assert np.abs(bad - y).max() > 100 * TOL


# --- refused variants ------------------------------------------------------------------------

def _write(tmp, name, text):
    path = tmp / name
    path.write_text(text)
    return path


def _edit_keras_config(tmp, source: str, edit) -> Path:
    """A copy of a .keras fixture with config.json changed by `edit(config)`."""
    out = tmp / f"edited_{source}"
    with zipfile.ZipFile(KERAS / source) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            zout.writestr(item, data)
    return out


def _npz(tmp, **arrays) -> Path:
    base = {"lstm0/W": np.zeros((8, 3), np.float32), "lstm0/R": np.zeros((8, 2), np.float32),
            "gate_order": np.array("i,f,g,o"), "sequence_output": np.array(True)}
    base.update({k.replace("__", "/"): v for k, v in arrays.items()})
    for key in [k for k, v in base.items() if v is None]:
        del base[key]
    path = tmp / "model.npz"
    np.savez(path, **base)
    return path


def _gru_npz(tmp, **arrays) -> Path:
    """A stacked GRU layer 0 (3 inputs, 2 units) instead of the LSTM."""
    gru = dict(lstm0__W=None, lstm0__R=None, gate_order=np.array("pytorch"), gru0__W=np.zeros((6, 3), np.float32),
               gru0__R=np.zeros((6, 2), np.float32), gru0__linear_before_reset=np.array(True))
    gru.update(arrays)
    return _npz(tmp, **gru)


def _functional_branch(config):
    layers = config["config"]["layers"]  # make the output Dense read from two layers
    out = layers[-1]
    out["inbound_nodes"][0]["args"].append(json.loads(json.dumps(out["inbound_nodes"][0]["args"][0])))
    out["inbound_nodes"][0]["args"][-1]["config"]["keras_history"][0] = "features"


def _bi_config(**changes):
    """An edit of bidirectional_lstm_concat_last.keras's Bidirectional config."""
    def edit(config):
        bi = config["config"]["layers"][1]["config"]
        for key, value in changes.items():
            if key.startswith("both_"):
                bi["layer"]["config"][key[5:]] = bi["backward_layer"]["config"][key[5:]] = value
            elif key.startswith("backward_"):
                bi["backward_layer"]["config"][key[9:]] = value
            else:
                bi[key] = value
    return lambda t: load_model(_edit_keras_config(t, "bidirectional_lstm_concat_last.keras", edit))


def _refuse_views_truncated(tmp) -> Path:
    """sd_views.pt with one storage cut short."""
    out = tmp / "truncated.pt"
    with zipfile.ZipFile(TORCH_SD / "sd_views.pt") as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            zout.writestr(item, data[:len(data) // 2] if "/data/" in item.filename else data)
    return out


class _RunsACommand:
    """What a malicious pickle does: calling os.system while being loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _malicious_pt(tmp) -> Path:
    """A zip laid out like torch.save's whose data.pkl would run a command when unpickled."""
    path = tmp / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps({"lstm.weight_ih_l0": _RunsACommand(tmp / "pwned")}, protocol=2))
        zf.writestr("evil/byteorder", "little")
    return path


def _pickle_pt(tmp, obj) -> Path:
    """A zip laid out like torch.save's around a plain pickled object."""
    path = tmp / "plain.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("plain/data.pkl", pickle.dumps(obj, protocol=2))
    return path


def _strided_pt(tmp, offset: int, size, stride, numel: int = 6) -> Path:
    """A torch.save-like zip whose one tensor views a 6-float storage with the given offset, size
    and stride: the pickle written opcode by opcode, as torch writes it (protocol 2)."""
    def text(value: str) -> bytes:  # BINUNICODE
        return b"X" + len(value).to_bytes(4, "little") + value.encode()

    def ints(values) -> bytes:  # a tuple of small ints
        return b"(" + b"".join(b"K" + bytes([v]) for v in values) + b"t"

    data = (b"\x80\x02}" + text("w") + b"ctorch._utils\n_rebuild_tensor_v2\n((" + text("storage")
            + b"ctorch\nFloatStorage\n" + text("0") + text("cpu") + b"K" + bytes([numel]) + b"tQ"
            + b"K" + bytes([offset]) + ints(size) + ints(stride) + b"\x89}tRs.")
    path = tmp / "strided.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("strided/data.pkl", data)
        zf.writestr("strided/data/0", np.arange(numel, dtype="<f4").tobytes())
    return path


def _damaged_pt(tmp) -> Path:
    path = tmp / "damaged.pt"
    with zipfile.ZipFile(TORCH_SD / "sd_gru2_last.pt") as zin, zipfile.ZipFile(path, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            zout.writestr(item, data[:40] if item.filename.endswith("data.pkl") else data)
    return path


SD_ARCH = "lstm(input=12, hidden=32, layers=2, batch_first=true) -> last -> linear(32, 9) -> relu -> linear(9, 3)"
SD = TORCH_SD / "sd_lstm2_last_mlp.pt"
BIGRU = TORCH_SD / "sd_bigru_hn.pt"

# id -> (load(tmp), error class, fragments every message must contain)
REFUSALS = {
    "keras-bidirectional-ave": (lambda t: load_model(KERAS / "refuse_bidirectional_ave.keras"), UnsupportedModelError,
                                ["refuse_bidirectional_ave.keras", "merge_mode='ave'", "only 'concat' and 'sum'"]),
    "keras-bidirectional-ave-h5": (lambda t: load_model(KERAS / "refuse_bidirectional_ave.h5"), UnsupportedModelError,
                                   ["merge_mode='ave'", "only 'concat' and 'sum'"]),
    "keras-bidirectional-mul": (_bi_config(merge_mode="mul"), UnsupportedModelError,
                                ["merge_mode='mul'", "not supported"]),
    "keras-bidirectional-none": (_bi_config(merge_mode=None), UnsupportedModelError,
                                 ["merge_mode=None", "two outputs"]),
    "keras-bidirectional-sum-final-state": (_bi_config(merge_mode="sum"), UnsupportedModelError,
                                            ["final state", "sum merge", "concat"]),
    "keras-bidirectional-stateful": (_bi_config(both_stateful=True), UnsupportedModelError,
                                     ["stateful=True inside Bidirectional", "whole window"]),
    "keras-bidirectional-backward-forward": (_bi_config(backward_go_backwards=False), UnsupportedModelError,
                                             ["go_backwards=True backward layer"]),
    "keras-bidirectional-units-differ": (_bi_config(backward_units=5), UnsupportedModelError,
                                         ["differ in units", "8", "5"]),
    "keras-bidirectional-simple-rnn": (_bi_config(layer={"class_name": "SimpleRNN", "config": {}}),
                                       UnsupportedModelError, ["Bidirectional around SimpleRNN", "LSTM or GRU"]),
    "keras-simple-rnn": (lambda t: load_model(KERAS / "refuse_simple_rnn.keras"), UnsupportedModelError,
                         ["SimpleRNN", "not supported yet"]),
    "keras-masking": (lambda t: load_model(KERAS / "refuse_masking.keras"), UnsupportedModelError,
                      ["Masking", "not supported", "skipped"]),
    "keras-lstm-relu": (lambda t: load_model(KERAS / "refuse_lstm_relu.keras"), UnsupportedModelError,
                        ["activation='relu'", "only activation='tanh'"]),
    "keras-gru-relu": (lambda t: load_model(_edit_keras_config(t, "gru_reset_after_last.keras", lambda c: c[
        "config"]["layers"][1]["config"].update(activation="relu"))), UnsupportedModelError,
        ["gru_encoder", "activation='relu'", "only activation='tanh'"]),
    "keras-gru-bias-shape": (lambda t: load_model(_edit_keras_config(t, "gru_reset_after_last.keras", lambda c: c[
        "config"]["layers"][1]["config"].update(reset_after=False))), ModelFormatError,
        ["bias (reset_after=False)", "[2, 36]", "[36]"]),
    "keras-hard-sigmoid": (lambda t: load_model(_edit_keras_config(t, "lstm_last_softmax.keras", lambda c: c[
        "config"]["layers"][1]["config"].update(recurrent_activation="hard_sigmoid"))), UnsupportedModelError,
        ["recurrent_activation='hard_sigmoid'"]),
    "keras-go-backwards": (lambda t: load_model(_edit_keras_config(t, "lstm_last_softmax.keras", lambda c: c[
        "config"]["layers"][1]["config"].update(go_backwards=True))), UnsupportedModelError,
        ["go_backwards", "not supported", "Bidirectional"]),
    "keras-gru-go-backwards": (lambda t: load_model(_edit_keras_config(t, "gru_no_reset_after_seq.keras", lambda c: c[
        "config"]["layers"][1]["config"].update(go_backwards=True))), UnsupportedModelError,
        ["tagger", "go_backwards", "not supported"]),
    "keras-softmax-not-last": (lambda t: load_model(_edit_keras_config(t, "lstm2_relu_dense.keras", lambda c: c[
        "config"]["layers"][-2]["config"].update(activation="softmax"))), UnsupportedModelError,
        ["softmax", "last layer"]),
    "keras-functional-branch": (lambda t: load_model(_edit_keras_config(t, "lstm_seq_dense.keras",
                                                                        _functional_branch)),
                                UnsupportedModelError, ["a_out", "2 inputs", "simple chain"]),
    "keras-subclassed": (lambda t: load_model(_edit_keras_config(t, "lstm_last_softmax.keras", lambda c: c.update(
        class_name="MyModel"))), UnsupportedModelError, ["MyModel", "Sequential and Functional"]),
    "keras-not-zip": (lambda t: load_model(_write(t, "x.keras", "hello")), ModelFormatError,
                      ["x.keras", "not a zip"]),
    "keras-weights-only-h5": (lambda t: load_model(_weights_only_h5(t)), ModelFormatError,
                              ["save_weights", "model.save()"]),
    "torch-no-arch": (lambda t: load_model(SD), ModelFormatError, ["--arch", "docs/pytorch-arch.md"]),
    "torch-proj-size": (lambda t: load_model(TORCH_SD / "sd_refuse_proj.pt", arch="lstm(6, 8) -> last"),
                        UnsupportedModelError, ["proj_size", "not supported yet", "weight_hr_l0"]),
    "torch-proj-size-arch": (lambda t: load_model(SD, arch="lstm(12, 32, proj_size=8)"), UnsupportedModelError,
                             ["proj_size", "not supported yet"]),
    "torch-bidirectional-says-false": (lambda t: load_model(TORCH_SD / "sd_refuse_bidirectional.pt",
                                                            arch="lstm(6, 5, bidirectional=false)"),
                                       ModelFormatError, ["bidirectional=false", "weight_ih_l0_reverse"]),
    "torch-bidirectional-says-true": (lambda t: load_model(SD, arch="lstm(12, 32, layers=2, bidirectional=true)"),
                                      ModelFormatError, ["bidirectional=true", "not bidirectional"]),
    "torch-gru-given-to-lstm": (lambda t: load_model(TORCH_SD / "sd_refuse_gru.pt", arch="lstm(6, 5)"),
                                ModelFormatError, ["weight_hh_l0", "[15, 5]", "nn.GRU", "gru stage"]),
    "torch-lstm-given-to-gru": (lambda t: load_model(SD, arch="gru(12, 32, layers=2) -> last"), ModelFormatError,
                                ["'lstm.weight_hh_l0'", "nn.LSTM", "lstm stage"]),
    "torch-rnn-stage": (lambda t: load_model(SD, arch="rnn(12, 32) -> last"), UnsupportedModelError,
                        ["rnn", "not supported yet"]),
    "torch-final-not-after-recurrent": (lambda t: load_model(BIGRU, arch="gru(5, 8, layers=2) -> linear(16, 4) -> "
                                                                        "final"),
                                        UnsupportedModelError, ["final (h_n)", "right after"]),
    "torch-final-then-last": (lambda t: load_model(BIGRU, arch="gru(5, 8, layers=2) -> final -> last"),
                              UnsupportedModelError, ["stage 3 last", "already selected"]),
    "torch-torchscript": (lambda t: load_model(TORCH_SD / "sd_refuse_torchscript.pt", arch="lstm(3, 2)"),
                          ModelFormatError, ["TorchScript", "state_dict()", "ONNX"]),
    "torch-pickled-module": (lambda t: load_model(TORCH_SD / "sd_refuse_pickled_module.pt", arch="lstm(3, 2)"),
                             ModelFormatError, ["not a plain state_dict", "torch.nn.modules.rnn.LSTM",
                                                "state_dict()", "ONNX"]),
    "torch-code-in-pickle": (lambda t: load_model(_malicious_pt(t), arch="lstm(3, 2)"), ModelFormatError,
                             ["evil.pt", "not a plain state_dict", "system", "runs no code"]),
    "torch-damaged-pickle": (lambda t: load_model(_damaged_pt(t), arch="gru(7, 12, layers=2)"), ModelFormatError,
                             ["damaged.pt", "not a readable PyTorch file"]),
    "torch-truncated-storage": (lambda t: load_model(_refuse_views_truncated(t), arch="lstm"), ModelFormatError,
                                ["truncated.pt", "bytes", "FloatStorage"]),
    "torch-not-torch": (lambda t: load_model(_write(t, "notes.pt", "just text"), arch="lstm"), ModelFormatError,
                        ["notes.pt", "not a PyTorch file"]),
    "torch-not-a-state-dict": (lambda t: load_model(_pickle_pt(t, {"epoch": 3, "weights": [1.0]}), arch="lstm"),
                               ModelFormatError, ["plain.pt", "epoch, weights", "not a state_dict of tensors"]),
    "arch-unknown-key": (lambda t: load_model(SD, arch="lstm(input=12, hiden=32) -> last"), ModelFormatError,
                         ["unknown key 'hiden'", "hidden"]),
    "arch-unknown-stage": (lambda t: load_model(SD, arch="lstm(12, 32) -> conv1d(3)"), ModelFormatError,
                           ["unknown stage", "conv1d"]),
    "arch-syntax": (lambda t: load_model(SD, arch="lstm(12, 32 -> last"), ModelFormatError,
                    ["column 13", "',' or ')'"]),
    "arch-bad-value": (lambda t: load_model(SD, arch="lstm(12, hidden=big)"), ModelFormatError,
                       ["hidden=big", "integer"]),
    "arch-shape-mismatch": (lambda t: load_model(SD, arch=SD_ARCH.replace("linear(9, 3)", "linear(9, 4)")),
                            ModelFormatError, ["'fc2.weight'", "[3, 9]", "[4, 9]"]),
    "arch-hidden-mismatch": (lambda t: load_model(SD, arch=SD_ARCH.replace("hidden=32", "hidden=16")),
                             ModelFormatError, ["'lstm.weight_ih_l0'", "[128, 12]", "[64, 12]"]),
    "arch-bidirectional-width": (lambda t: load_model(BIGRU, arch="gru(5, 8, layers=2) -> final -> linear(8, 4)"),
                                 ModelFormatError, ["in=8", "outputs 16"]),
    "arch-unused-tensors": (lambda t: load_model(SD, arch="lstm(12, 32, layers=2) -> last -> linear(32, 9)"),
                            ModelFormatError, ["not used", "'fc2.weight'", "'fc2.bias'"]),
    "arch-missing-module": (lambda t: load_model(SD, arch="lstm(12, 32, layers=2, name=encoder) -> last"),
                            ModelFormatError, ["module 'encoder'", "encoder.weight_ih_l0"]),
    "arch-layers-mismatch": (lambda t: load_model(SD, arch="lstm(12, 32, layers=3) -> last"), ModelFormatError,
                             ["layers [0, 1]", "layers=3"]),
    "arch-activation-after-lstm": (lambda t: load_model(SD, arch="lstm(12, 32, layers=2) -> relu"),
                                   UnsupportedModelError, ["relu", "after a recurrent layer"]),
    "arch-yaml-top-key": (lambda t: load_model(SD, arch=str(_write(t, "a.yaml", "stages:\n  - lstm\n"))),
                          ModelFormatError, ["a.yaml", "'arch'", "'layers'"]),
    "arch-file-missing": (lambda t: load_model(SD, arch=str(t / "nope.json")), ModelFormatError,
                          ["nope.json", "not found"]),
    "arch-on-keras": (lambda t: load_model(KERAS / "lstm_stateful.keras", arch="lstm(3, 6)"), UnsupportedModelError,
                      ["--arch", "PyTorch"]),
    "npz-peephole": (lambda t: load_model(_npz(t, lstm0__P=np.zeros(6, np.float32))), UnsupportedModelError,
                     ["lstm0/P", "peephole", "not supported yet"]),
    "npz-no-gate-order": (lambda t: load_model(_npz(t, gate_order=None)), ModelFormatError,
                          ["gate order", "gate_order"]),
    "npz-bad-gate-order": (lambda t: load_model(_npz(t, gate_order=np.array("i,f,x,o"))), ModelFormatError,
                           ["'i,f,x,o'", "permutation"]),
    "npz-unknown-key": (lambda t: load_model(_npz(t, lstm0__Wx=np.zeros(3))), ModelFormatError,
                        ["lstm0/Wx", "docs/npz-schema.md"]),
    "npz-no-sequence-output": (lambda t: load_model(_npz(t, sequence_output=None)), ModelFormatError,
                               ["sequence_output"]),
    "npz-shape": (lambda t: load_model(_npz(t, lstm0__R=np.zeros((8, 3), np.float32))), ModelFormatError,
                  ["lstm0/R", "[8, 3]", "[8, 2]"]),
    "npz-data-file": (lambda t: load_model(_data_npz(t)), ModelFormatError, ["data file", "lstm0"]),
    "npz-gru-no-linear-before-reset": (lambda t: load_model(_gru_npz(t, gru0__linear_before_reset=None)),
                                       ModelFormatError, ["gru0/linear_before_reset", "np.array(True)"]),
    "npz-gru-lstm-letters": (lambda t: load_model(_gru_npz(t, gru0__gate_order=np.array("i,f,g,o"))),
                             ModelFormatError, ["'gru0/gate_order'", "z, r, n"]),
    "npz-gru-lbr-on-lstm": (lambda t: load_model(_npz(t, lstm0__linear_before_reset=np.array(True))),
                            ModelFormatError, ["lstm0/linear_before_reset", "GRU layers only"]),
    "npz-lstm-and-gru-same-index": (lambda t: load_model(_gru_npz(t, lstm0__W=np.zeros((8, 3), np.float32),
                                                                   lstm0__R=np.zeros((8, 2), np.float32))),
                                    ModelFormatError, ["lstm0 and gru0", "one numbering"]),
    "npz-bidirectional-one-direction": (lambda t: load_model(_npz(t, lstm0__W=None, lstm0__R=None,
                                                                  lstm0__forward__W=np.zeros((8, 3), np.float32),
                                                                  lstm0__forward__R=np.zeros((8, 2), np.float32))),
                                        ModelFormatError, ["lstm0/backward/", "both directions"]),
    "npz-bidirectional-mixed": (lambda t: load_model(_npz(t, lstm0__forward__W=np.zeros((8, 3), np.float32))),
                                ModelFormatError, ["'lstm0/R'", "forward/", "backward/"]),
    "npz-bidirectional-merge": (lambda t: load_model(_npz(
        t, lstm0__W=None, lstm0__R=None, lstm0__merge=np.array("ave"),
        **{f"lstm0__{d}__{p}": np.zeros((8, 3 if p == "W" else 2), np.float32)
           for d in ("forward", "backward") for p in "WR"})), ModelFormatError, ["lstm0/merge", "'concat' or 'sum'"]),
    "npz-merge-unidirectional": (lambda t: load_model(_npz(t, lstm0__merge=np.array("sum"))), ModelFormatError,
                                 ["lstm0/merge", "bidirectional"]),
    "npz-last-step-from": (lambda t: load_model(_npz(t, sequence_output=np.array(False),
                                                      last_step_from=np.array("middle"))),
                           ModelFormatError, ["last_step_from 'middle'", "final_state, last_index"]),
}


def _weights_only_h5(tmp) -> Path:
    import h5py
    path = tmp / "weights.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("layers/lstm/vars/0", data=np.zeros((3, 8)))
    return path


def _data_npz(tmp) -> Path:
    path = tmp / "data.npz"
    np.savez(path, x=np.zeros((2, 3, 4), np.float32), y=np.zeros(2))
    return path


@pytest.mark.parametrize("key", sorted(REFUSALS))
def test_refused_with_one_clear_line(key, tmp_path):
    load, error_class, fragments = REFUSALS[key]
    with pytest.raises(LstmEdgeError) as info:
        load(tmp_path)
    assert type(info.value) is error_class, f"{type(info.value).__name__}: {info.value}"
    message = one_line(info.value)
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message


def test_pickled_code_never_runs(tmp_path):
    """The restricted unpickler stops at the global os.system before anything is called."""
    evil = _malicious_pt(tmp_path)
    with pytest.raises(ModelFormatError):
        load_model(evil, arch="lstm(3, 2)")
    assert not (tmp_path / "pwned").exists()
    pickle.loads(zipfile.ZipFile(evil).read("evil/data.pkl"))  # the fixture does run a command when unpickled
    assert (tmp_path / "pwned").exists()


def test_torch_zip_reads_dtypes_and_views():
    """Every common dtype, views with an offset and strides (transposed, sliced, expanded), 0-d and
    empty tensors and an nn.Parameter come out as torch had them (bfloat16 widened to float32)."""
    from lstm_edge.importers.torch_zip import load_torch_zip
    got = load_torch_zip(TORCH_SD / "sd_views.pt")
    with np.load(TORCH_SD / "sd_views.npz") as expected:
        assert sorted(got) == sorted(expected.files)
        for key in expected.files:
            assert got[key].dtype == expected[key].dtype and got[key].shape == expected[key].shape, key
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
            assert got[key].flags.c_contiguous and got[key].flags.writeable


def test_torch_zip_strides_and_bounds(tmp_path):
    from lstm_edge.importers.torch_zip import load_torch_zip
    got = load_torch_zip(_strided_pt(tmp_path, 1, (2, 2), (1, 3)))["w"]  # [[1, 4], [2, 5]]
    np.testing.assert_array_equal(got, [[1, 4], [2, 5]])
    with pytest.raises(ModelFormatError) as info:
        load_torch_zip(_strided_pt(tmp_path, 2, (2, 2), (1, 3)))  # would read element 6 of 6
    message = one_line(info.value)
    assert "strided.pt" in message and "reaches past its storage of 6 elements" in message, message


def test_torch_checkpoint_dict_is_read():
    """A training checkpoint (Adam state, numbers, strings, bytes, a set) that keeps the weights under
    'model_state_dict' loads like the state_dict."""
    from lstm_edge.importers.torch_zip import load_torch_zip
    checkpoint = TORCH_SD / "sd_checkpoint_adam.pth"
    raw = load_torch_zip(checkpoint)
    assert (raw["epoch"], raw["tag"], raw["seen"]) == (7, b"run-3", {1, 2})
    x, y = _io(TORCH_SD / "sd_two_lstms_softmax.io.npz")
    model = load_model(checkpoint, arch=str(TORCH_SD / "sd_two_lstms_softmax.arch.json"))
    np.testing.assert_allclose(forward(model, x), y, rtol=0, atol=TOL)


def test_torch_files_need_no_torch(monkeypatch):
    """Zip-format files load with torch unimportable; the legacy format says what to do instead."""
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    x, y = _io(TORCH_SD / "sd_bigru_hn.io.npz")
    model = load_model(BIGRU, arch=str(TORCH_SD / "sd_bigru_hn.arch"))
    np.testing.assert_allclose(forward(model, x), y, rtol=0, atol=TOL)
    with pytest.raises(UnsupportedModelError) as info:
        load_model(TORCH_SD / "sd_legacy_format.pt", arch="lstm(3, 2)")
    message = one_line(info.value)
    assert "legacy" in message and "pip install torch" in message and "ONNX" in message, message


# --- the arch language ------------------------------------------------------------------------

def test_arch_forms_are_equivalent(tmp_path):
    from lstm_edge.importers.torch_arch import load_arch
    line = ("lstm(input_size=5, hidden_size=8, name=rnn) -> linear(in=8, out=4, name=proj) -> tanh -> "
            "dropout(0.1) -> Linear(4, 3, name='classifier') -> log_softmax(dim=-1)")
    yaml_stages = load_arch(str(TORCH_SD / "sd_lstm_seq_logsoftmax.arch.yaml"))
    as_json = _write(tmp_path, "a.json", json.dumps({"arch": line}))
    for other in (load_arch(line), load_arch(str(as_json))):
        assert [(s.kind, s.args) for s in other] == [(s.kind, s.args) for s in yaml_stages]


DOC_EXAMPLE_FIXTURES = ("sd_lstm2_last_mlp", "sd_lstm_seq_logsoftmax", "sd_two_lstms_softmax", "sd_gru2_last",
                        "sd_bilstm_last_index", "sd_bigru_hn", "sd_bilstm2_seq")


def test_docs_examples_parse():
    """Every one-line example in docs/pytorch-arch.md parses; the first ones describe the state_dict
    fixtures, in DOC_EXAMPLE_FIXTURES order, and compute what PyTorch computed."""
    from lstm_edge.importers.torch_arch import load_arch
    doc = (REPO / "docs" / "pytorch-arch.md").read_text()
    examples = [line.strip().strip("`") for line in doc.splitlines() if line.strip().startswith(("lstm(", "gru("))]
    assert len(examples) >= len(DOC_EXAMPLE_FIXTURES)
    for example in examples:
        assert load_arch(example)
    for example, name in zip(examples, DOC_EXAMPLE_FIXTURES):
        x, y = _io(TORCH_SD / f"{name}.io.npz")
        np.testing.assert_allclose(forward(load_model(TORCH_SD / f"{name}.pt", arch=example), x), y, rtol=0, atol=TOL)


# --- the command line ---------------------------------------------------------------------------

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "lstm_edge", *map(str, args)], capture_output=True, text=True)


def test_cli_inspect_and_compile_with_arch(tmp_path):
    result = _cli("inspect", SD, "--arch", SD_ARCH)
    assert result.returncode == 0, result.stderr
    assert "dense 0 'fc1': 32 -> 9, activation relu" in result.stdout
    calib = tmp_path / "calib.npy"
    np.save(calib, _io(TORCH_SD / "sd_lstm2_last_mlp.io.npz")[0])
    out = tmp_path / "sd"
    result = _cli("compile", SD, "--arch", TORCH_SD / "sd_lstm2_last_mlp.arch", "--calib", calib, "-o", out)
    assert result.returncode == 0, result.stderr
    assert (out / "sd.h").is_file() and (out / "sd.c").is_file()
    bad = _cli("compile", SD, "--arch", "lstm(12, 32) -> bogus", "--calib", calib, "-o", tmp_path / "bad")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
    assert "bogus" in bad.stderr and not (tmp_path / "bad").exists()


def test_cli_compiles_a_keras_bidirectional_window_model(tmp_path):
    x, _ = _io(KERAS / "bidirectional_stack_lstm.io.npz")
    calib = tmp_path / "calib.npy"
    np.save(calib, x)
    out = tmp_path / "bi"
    result = _cli("compile", KERAS / "bidirectional_stack_lstm.keras", "--calib", calib, "--max-steps", x.shape[1],
                  "-o", out)
    assert result.returncode == 0, result.stderr
    header = (out / "bi.h").read_text()
    assert f"#define BI_MAX_STEPS {x.shape[1]}" in header and "bi_run" in header
