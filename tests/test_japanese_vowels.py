"""Real data: the shipped Japanese Vowels classifier (PyTorch LSTM(12, 32) + Linear(32, 9), exported
to ONNX), compiled with its train split as calibration. int8 test accuracy must be within 1
percentage point of float, and int8 and float must agree on >= 98 % of the argmaxes."""

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


@pytest.fixture(scope="module")
def vowels():
    model = load_model(EXAMPLE / "model.onnx")
    qmodel = quantize(model, calibrate_model(model, EXAMPLE / "calib.npy"), name="vowels")
    with np.load(EXAMPLE / "test.npz") as z:
        x, y = z["x"], z["y"]
    return model, qmodel, x, y


def test_shipped_data_is_the_shared_data_set():
    with np.load(require_file(SHARED / "data" / "japanese_vowels.npz")) as d:
        assert np.array_equal(np.load(EXAMPLE / "calib.npy"), d["x_train"])
        with np.load(EXAMPLE / "test.npz") as z:
            assert np.array_equal(z["x"], d["x_test"]) and np.array_equal(z["y"], d["y_test"].astype(np.int64))


def test_float_reference_equals_onnxruntime(vowels):
    model, _, x, _ = vowels
    session = ort.InferenceSession(str(EXAMPLE / "model.onnx"), providers=["CPUExecutionProvider"])
    (y_ort,) = session.run(None, {session.get_inputs()[0].name: x})
    assert np.max(np.abs(forward(model, x) - y_ort)) <= 1e-5


def test_int8_accuracy_within_one_point_of_float(vowels):
    model, qmodel, x, labels = vowels
    float_pred = forward(model, x).argmax(-1)
    int8_pred = simulate(qmodel, qmodel.input_q.quantize(x)).astype(np.int64).argmax(-1)
    float_acc, int8_acc = np.mean(float_pred == labels), np.mean(int8_pred == labels)
    assert float_acc > 0.95  # the example is a working classifier (96.8 % as trained)
    assert abs(int8_acc - float_acc) <= 0.01, (float_acc, int8_acc)
    assert np.mean(float_pred == int8_pred) >= 0.98


def test_c_equals_simulator_on_the_test_set(vowels, tmp_path):
    model, qmodel, x, _ = vowels
    out = write_bundle(qmodel, tmp_path / "vowels", model)
    x_q = qmodel.input_q.quantize(x)
    exe = build_harness(qmodel, out, tmp_path / "build", opt="-O2")
    assert np.array_equal(run_harness(exe, qmodel, x_q), simulate(qmodel, x_q))
