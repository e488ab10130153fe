"""Real data: the shipped Japanese Vowels classifiers (PyTorch, exported to ONNX), compiled with
their train split as calibration:

    model.onnx          LSTM(12, 32) -> last step -> Linear(32, 9)
    model_gru.onnx      GRU(12, 32) -> last step -> Linear(32, 9)
    model_bilstm.onnx   bidirectional LSTM(12, 16 per direction) -> out[:, -1] -> Linear(32, 9)

int8 test accuracy must be within 1 percentage point of float, and int8 and float must agree on
>= 98 % of the argmaxes."""

import numpy as np
import onnxruntime as ort
import pytest

from conftest import REPO, SHARED, require_file
from lstm_edge import calibrate_model, load_model, quantize
from lstm_edge.bundle import write_bundle
from lstm_edge.hostbuild import build_harness, run_harness
from lstm_edge.reference import forward
from lstm_edge.simulator import simulate

EXAMPLE = REPO / "examples" / "japanese_vowels"
MODELS = {"vowels": "model.onnx", "vowels_gru": "model_gru.onnx", "vowels_bilstm": "model_bilstm.onnx"}


@pytest.fixture(scope="module", params=list(MODELS))
def vowels(request):
    """(name, onnx path, float model, quantized model, x_test, y_test) for each shipped model."""
    name = request.param
    path = EXAMPLE / MODELS[name]
    model = load_model(path)
    # max_steps sizes the bidirectional model's window (29 frames); the others ignore it.
    qmodel = quantize(model, calibrate_model(model, EXAMPLE / "calib.npy"), name=name, max_steps=29)
    with np.load(EXAMPLE / "test.npz") as z:
        x, y = z["x"], z["y"]
    return name, path, model, qmodel, x, y


def test_shipped_data_is_the_shared_data_set():
    with np.load(require_file(SHARED / "data" / "japanese_vowels.npz")) as d:
        assert np.array_equal(np.load(EXAMPLE / "calib.npy"), d["x_train"])
        with np.load(EXAMPLE / "test.npz") as z:
            assert np.array_equal(z["x"], d["x_test"]) and np.array_equal(z["y"], d["y_test"].astype(np.int64))


def test_float_reference_equals_onnxruntime(vowels):
    _, path, model, _, x, _ = vowels
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y_ort,) = session.run(None, {session.get_inputs()[0].name: x})
    assert np.max(np.abs(forward(model, x) - y_ort)) <= 1e-5


def test_int8_accuracy_within_one_point_of_float(vowels):
    _, _, model, qmodel, x, labels = vowels
    float_pred = forward(model, x).argmax(-1)
    int8_pred = simulate(qmodel, qmodel.input_q.quantize(x)).astype(np.int64).argmax(-1)
    float_acc, int8_acc = np.mean(float_pred == labels), np.mean(int8_pred == labels)
    assert float_acc > 0.93  # a working classifier (as trained: LSTM 96.8 %, see the example's README)
    assert abs(int8_acc - float_acc) <= 0.01, (float_acc, int8_acc)
    assert np.mean(float_pred == int8_pred) >= 0.98


def test_c_equals_simulator_on_the_test_set(vowels, tmp_path):
    name, _, model, qmodel, x, _ = vowels
    out = write_bundle(qmodel, tmp_path / name, model)
    x_q = qmodel.input_q.quantize(x)
    exe = build_harness(qmodel, out, tmp_path / "build", opt="-O2")
    assert np.array_equal(run_harness(exe, qmodel, x_q, "run"), simulate(qmodel, x_q))
