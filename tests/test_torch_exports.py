"""Models exported from PyTorch 2.13 (dynamo and legacy exporters) load and compute right.

The fixtures in tests/fixtures/torch/ come from tests/fixtures/make_torch_fixtures.py; the
stored `y` is what PyTorch itself computed, so it is an oracle independent of both
onnxruntime and our importer. This module does not need torch.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "torch"
TOL = 1e-5

SUPPORTED = ("lstm1_seq", "lstm2_last_fc", "lstm3_fc_relu_fc_softmax", "lstm1_hn")
EXPORTERS = ("dynamo", "legacy")
CASES = [pytest.param(name, exporter, id=f"{name}-{exporter}")
         for name in SUPPORTED for exporter in EXPORTERS]


def _onnxruntime():
    """onnxruntime, or skip locally / fail in CI (the policy of conftest.require_tool)."""
    try:
        import onnxruntime
    except ImportError:
        message = "onnxruntime is not installed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return onnxruntime


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
