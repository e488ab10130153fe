"""Models exported from PyTorch 2.13 (dynamo and legacy exporters) load and compute right:
LSTM and GRU, stacked, bidirectional, full sequences, out[:, -1] and h_n heads.

The fixtures in tests/fixtures/torch/ come from tests/fixtures/make_torch_fixtures.py; the
stored `y` is what PyTorch itself computed, so it is an oracle independent of both
onnxruntime and our importer. This module does not need torch.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "torch"
TOL = 1e-5

# name -> (the IR's recurrent layers, last_step_from of a last-step model or None for a sequence model)
EXPECTED = {
    "lstm1_seq": (("LstmLayer",), None),
    "lstm2_last_fc": (("LstmLayer", "LstmLayer"), "final_state"),  # forward layers: both selections agree
    "lstm3_fc_relu_fc_softmax": (("LstmLayer",) * 3, None),
    "lstm1_hn": (("LstmLayer",), "final_state"),
    "gru1_seq": (("GruLayer",), None),
    "gru2_last_fc": (("GruLayer", "GruLayer"), "final_state"),
    # out[:, -1] of a bidirectional layer: the backward direction after one step
    "bilstm_last_fc": (("BidirectionalLayer",), "last_index"),
    # torch.cat([h_n[-2], h_n[-1]], -1): each direction's final state
    "bigru_hn_fc": (("BidirectionalLayer",), "final_state"),
    "bilstm2_seq": (("BidirectionalLayer", "BidirectionalLayer"), None),
    # h_n of a stack: Concat of the layers' Y_h, then its last entry (entries) taken
    "lstm2_hn_fc": (("LstmLayer", "LstmLayer"), "final_state"),
    "bigru2_hn_fc": (("BidirectionalLayer", "BidirectionalLayer"), "final_state"),
}
SUPPORTED = tuple(EXPECTED)
EXPORTERS = ("dynamo", "legacy")
CASES = [pytest.param(name, exporter, id=f"{name}-{exporter}")
         for name in SUPPORTED for exporter in EXPORTERS]


def _onnxruntime():
    from conftest import require_module
    return require_module("onnxruntime")


def _io(name: str):
    with np.load(FIXTURE_DIR / f"{name}.io.npz") as data:
        return data["x"], data["y"], str(data["layout"])


def _model_path(name: str, exporter: str) -> Path:
    path = FIXTURE_DIR / f"{name}.{exporter}.onnx"
    assert path.is_file(), f"missing fixture {path}; run tests/fixtures/make_torch_fixtures.py"
    return path


def _as_model_layout(x_bf: np.ndarray, layout: str) -> np.ndarray:
    """The stored x is batch-first; a time-major model takes [T, N, F]."""
    assert layout in ("batch_first", "time_major"), layout
    return x_bf if layout == "batch_first" else np.ascontiguousarray(x_bf.transpose(1, 0, 2))


def _reference_in_model_layout(out: np.ndarray, layout: str) -> np.ndarray:
    """reference.forward answers batch-first; a time-major sequence model emits [T, N, O]."""
    if layout == "time_major" and out.ndim == 3:
        return out.transpose(1, 0, 2)
    return out


def test_fixture_inputs_are_batch_first_and_big_enough():
    for name in SUPPORTED + ("lstm_proj",):
        x, y, layout = _io(name)
        assert x.dtype == np.float32 and y.dtype == np.float32
        assert x.ndim == 3 and x.shape[0] >= 4 and x.shape[1] >= 7, (name, x.shape)
        assert np.all(np.isfinite(x)) and np.all(np.isfinite(y))


def test_dynamo_fixtures_exercise_external_data():
    side_files = sorted(FIXTURE_DIR.glob("*.dynamo.onnx.data"))
    assert side_files, "no dynamo fixture keeps its weights in a .onnx.data side file"


@pytest.mark.parametrize("name, exporter", CASES)
def test_onnxruntime_matches_torch(name, exporter):
    """Sanity of the fixture itself: the exported graph computes what torch computed."""
    ort = _onnxruntime()
    x, y, layout = _io(name)
    sess = ort.InferenceSession(str(_model_path(name, exporter)), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: _as_model_layout(x, layout)})[0]
    assert got.shape == y.shape
    np.testing.assert_allclose(got, y, rtol=0, atol=TOL)


@pytest.mark.parametrize("name, exporter", CASES)
def test_importer_and_reference_match_torch(name, exporter):
    from lstm_edge.importers import load_model
    from lstm_edge.reference import forward

    x, y, layout = _io(name)
    model = load_model(str(_model_path(name, exporter)))
    got = _reference_in_model_layout(forward(model, x), layout)
    assert got.shape == y.shape, f"reference output {got.shape}, torch {y.shape}"
    np.testing.assert_allclose(got, y, rtol=0, atol=TOL)


@pytest.mark.parametrize("name, exporter", CASES)
def test_imported_layers(name, exporter):
    """The layer kinds and the last-step selection the importer reads from each export."""
    from lstm_edge.importers import load_model
    from lstm_edge.ir import BidirectionalLayer, GruLayer

    model = load_model(str(_model_path(name, exporter)))
    kinds, last_step_from = EXPECTED[name]
    assert tuple(type(layer).__name__ for layer in model.recurrent_layers) == kinds
    assert model.sequence_output == (last_step_from is None)
    if last_step_from is not None:
        assert model.last_step_from == last_step_from
    for layer in model.recurrent_layers:
        for direction in ((layer.forward, layer.backward) if isinstance(layer, BidirectionalLayer) else (layer,)):
            assert not direction.reverse
            if isinstance(direction, GruLayer):  # PyTorch's GRU is ONNX's linear_before_reset=1
                assert direction.linear_before_reset


def test_bidirectional_last_step_selections_differ():
    """The fixtures tell the two selections apart: with the other one the reference is wrong."""
    from dataclasses import replace

    from lstm_edge.importers import load_model
    from lstm_edge.reference import forward

    for name, other in (("bilstm_last_fc", "final_state"), ("bigru_hn_fc", "last_index")):
        x, y, _ = _io(name)
        model = replace(load_model(str(_model_path(name, "legacy"))), last_step_from=other)
        assert np.max(np.abs(forward(model, x) - y)) > 1e-3, name


def test_projection_lstm_is_rejected_with_a_clear_error():
    """The dynamo exporter writes proj_size as hidden_size and drops weight_hr; refuse it."""
    from lstm_edge.errors import ModelFormatError, UnsupportedModelError
    from lstm_edge.importers import load_model

    with pytest.raises((UnsupportedModelError, ModelFormatError)) as info:
        load_model(str(_model_path("lstm_proj", "dynamo")))
    assert "proj" in str(info.value).lower(), str(info.value)


def test_missing_external_data_file_is_a_model_format_error(tmp_path):
    """A dynamo model copied without its .onnx.data side file: one clear error, no traceback."""
    from lstm_edge.errors import ModelFormatError
    from lstm_edge.importers import load_model

    lonely = tmp_path / "lstm1_seq.dynamo.onnx"
    shutil.copy(_model_path("lstm1_seq", "dynamo"), lonely)
    with pytest.raises(ModelFormatError):
        load_model(str(lonely))


@pytest.mark.parametrize("name", SUPPORTED)
def test_compiled_c_equals_simulator(name, tmp_path):
    """Every exported model compiles (bidirectional ones as window models) and its C equals the
    simulator on 256 sequences: random, calibration-like and saturating int8 inputs."""
    from conftest import require_tool
    from lstm_edge.bundle import write_bundle
    from lstm_edge.calibration import calibrate
    from lstm_edge.hostbuild import build_harness, run_harness
    from lstm_edge.importers import load_model
    from lstm_edge.quantizer import quantize
    from lstm_edge.simulator import simulate
    from lstm_edge.verify import default_inputs
    from model_factory import signal_like

    x, _, _ = _io(name)
    steps = x.shape[1]
    model = load_model(FIXTURE_DIR / f"{name}.legacy.onnx")
    calib = signal_like(np.random.default_rng(len(name)), 64, steps, model.input_size)
    qmodel = quantize(model, calibrate(model, calib), name="m", max_steps=steps)
    out = write_bundle(qmodel, tmp_path / "m", model)
    x_q = default_inputs(qmodel, sequences=256, steps=steps)
    exe = build_harness(qmodel, out, tmp_path / "build", cc=require_tool("gcc"))
    assert np.array_equal(run_harness(exe, qmodel, x_q, "run"), simulate(qmodel, x_q))
