"""Keras models converted to ONNX by tf2onnx load and compute right: LSTM, stacked LSTM, GRU
(reset_after=True), Bidirectional (last step and full sequence), and a Dense applied to every step.

The fixtures in tests/fixtures/tf2onnx/ come from tests/fixtures/make_tf2onnx_fixtures.py; the
stored `y` is what Keras itself computed, so it is an oracle independent of both onnxruntime and
our importer. This module does not need TensorFlow or tf2onnx.

What tf2onnx writes around the recurrent nodes: Transposes to and from time-major, zero initial
states built as Expand(0, Concat(Shape(x)[0:1], [H])) + Unsqueeze (a bidirectional layer: two of
them concatenated), Slice + Squeeze of Y per direction and of its last (backward: first) step,
MatMul + Add heads, Softmax, and for a Dense on a sequence Keras' Tensordot: Reshape
[N, T, H] -> [-1, H], MatMul, Reshape back to Concat(Shape(y)[0, 1], [units]).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lstm_edge.errors import UnsupportedModelError
from lstm_edge.importers import load_model
from lstm_edge.importers.onnx_importer import inspect_onnx
from lstm_edge.reference import forward

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "tf2onnx"
TOL = 1e-5

# name -> (the IR's recurrent layers, sequence_output, activations of the dense head)
EXPECTED = {
    "lstm1_last_softmax": (("LstmLayer",), False, 1),
    "lstm2_last_dense": (("LstmLayer", "LstmLayer"), False, 1),
    "gru1_last_softmax": (("GruLayer",), False, 1),
    # Keras' Bidirectional(return_sequences=False): forward at t = T-1 next to backward at t = 0
    "bilstm_last_dense": (("BidirectionalLayer",), False, 1),
    "lstm1_seq_dense": (("LstmLayer",), True, 1),
    "bigru_seq_lstm_softmax": (("BidirectionalLayer", "LstmLayer"), False, 1),
}


def _load(name):
    with np.load(FIXTURE_DIR / f"{name}.io.npz") as d:
        return FIXTURE_DIR / f"{name}.onnx", d["x"], d["y"]


def test_every_fixture_is_listed():
    assert sorted(p.stem for p in FIXTURE_DIR.glob("*.onnx")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_onnxruntime_matches_keras(name):
    ort = pytest.importorskip("onnxruntime")
    path, x, y = _load(name)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert got.shape == y.shape
    np.testing.assert_allclose(got, y, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_import_matches_keras(name):
    path, x, y = _load(name)
    layers, sequence_output, head = EXPECTED[name]
    model = load_model(path)
    assert tuple(type(layer).__name__ for layer in model.recurrent_layers) == layers
    assert model.sequence_output is sequence_output
    assert len(model.head) == head
    if not sequence_output:
        assert model.last_step_from == "final_state"
    got = forward(model, x)
    assert got.shape == y.shape
    np.testing.assert_allclose(got, y, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_layouts(name):
    info = inspect_onnx(FIXTURE_DIR / f"{name}.onnx")
    assert info.input_layout == "batch_first"
    want = ("batch", "time", "feature") if EXPECTED[name][1] else ("batch", "feature")
    assert info.output_axes == want


def test_softmax_is_kept():
    model = load_model(FIXTURE_DIR / "gru1_last_softmax.onnx")
    assert model.final_softmax == "softmax"
    assert model.recurrent_layers[0].linear_before_reset  # Keras reset_after=True


def _tensordot_nodes():
    import onnx

    graph = onnx.load(FIXTURE_DIR / "lstm1_seq_dense.onnx").graph
    reshape = next(n for n in graph.node if n.name.endswith("Tensordot/Reshape"))
    matmul = next(n for n in graph.node if n.name.endswith("Tensordot/MatMul"))
    return reshape, matmul


@pytest.mark.parametrize("which", [0, 1], ids=["merging_reshape", "matmul"])
def test_batch_and_time_left_merged_is_refused(which):
    """Between Keras' two Tensordot Reshapes batch and time are one axis: not a compilable output."""
    reshape, node = _tensordot_nodes()[0], _tensordot_nodes()[which]
    with pytest.raises(UnsupportedModelError) as err:
        load_model(FIXTURE_DIR / "lstm1_seq_dense.onnx", output=node.output[0])
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"node '{reshape.name}' (Reshape): reshapes [batch, time, feature] "
                              f"to [-1, 10], merging batch and time, and no later Reshape splits them back; ")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_compiled_c_equals_simulator(name, tmp_path):
    """Each tf2onnx graph compiles (bidirectional ones as window models) and its C equals the simulator."""
    from conftest import require_tool
    from lstm_edge.bundle import write_bundle
    from lstm_edge.calibration import calibrate
    from lstm_edge.hostbuild import build_harness, run_harness
    from lstm_edge.quantizer import quantize
    from lstm_edge.simulator import simulate
    from lstm_edge.verify import default_inputs

    path, x, _ = _load(name)
    model = load_model(path)
    steps = x.shape[1]
    qmodel = quantize(model, calibrate(model, x), name="t", max_steps=steps)
    out = write_bundle(qmodel, tmp_path / "t", model)
    x_q = np.concatenate([qmodel.input_q.quantize(x), default_inputs(qmodel, sequences=200, steps=steps)])
    exe = build_harness(qmodel, out, tmp_path / "build", cc=require_tool("gcc"))
    assert np.array_equal(run_harness(exe, qmodel, x_q, "run"), simulate(qmodel, x_q))
