"""GRU layers: the float reference against onnxruntime (both linear_before_reset variants), and the
integer GRU against the float one (the C == simulator part is in test_bitexact.py)."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lstm_edge.calibration import calibrate
from lstm_edge.ir import FloatModel, GruLayer, to_canonical_gate_order
from lstm_edge.quantizer import quantize
from lstm_edge.reference import forward
from lstm_edge.simulator import simulate
from model_factory import random_model, signal_like


def onnx_gru(w, r, b, hidden, lbr):
    node = helper.make_node("GRU", ["x", "W", "R", "B"], ["Y"], hidden_size=hidden, linear_before_reset=lbr)
    graph = helper.make_graph(
        [node], "gru", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, w.shape[2]])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(r, "R"), numpy_helper.from_array(b, "B")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@pytest.mark.parametrize("lbr", [0, 1])
@pytest.mark.parametrize("features,hidden", [(1, 1), (5, 7), (16, 32)])
def test_float_gru_equals_onnxruntime(lbr, features, hidden):
    rng = np.random.default_rng(features * 100 + hidden + lbr)
    w = rng.normal(0, 0.5, (1, 3 * hidden, features)).astype(np.float32)
    r = rng.normal(0, 0.5, (1, 3 * hidden, hidden)).astype(np.float32)
    b = rng.normal(0, 0.3, (1, 6 * hidden)).astype(np.float32)
    x = rng.normal(0, 1, (4, 11, features)).astype(np.float32)
    session = ort.InferenceSession(onnx_gru(w, r, b, hidden, lbr).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x.transpose(1, 0, 2)})  # ONNX layout 0: [T, N, F]
    gates = lambda a: to_canonical_gate_order(a, "onnx", cell="gru")  # noqa: E731
    layer = GruLayer(gates(w[0]), gates(r[0]), gates(b[0, :3 * hidden]), gates(b[0, 3 * hidden:]),
                     linear_before_reset=bool(lbr))
    ours = forward(FloatModel((layer,)), x)
    assert np.max(np.abs(ours - y[:, 0].transpose(1, 0, 2))) <= 1e-5


@pytest.mark.parametrize("kind", ["gru", "gru0"])
def test_integer_gru_tracks_float(kind):
    rng = np.random.default_rng(5)
    model = random_model(8, [24], [], sequence_output=True, kinds=[kind], seed=9)
    qmodel = quantize(model, calibrate(model, signal_like(rng, 128, 20, 8)), name="g")
    x = signal_like(rng, 64, 20, 8)
    err = qmodel.output_q.dequantize(simulate(qmodel, qmodel.input_q.quantize(x))) - forward(model, x)
    lsb = qmodel.output_q.scale
    # Bounds in output LSBs, measured against the LSTM's (same scheme): int8 weights and inputs and the
    # Q3.12 / Q0.15 gates cost about 1 LSB RMS; the recurrence occasionally amplifies one value to
    # 10-25 LSB (the LSTM does the same), so the tail is bounded at the 99.9th percentile. An arithmetic
    # slip (wrong gate, bias placement or scale) costs tens of LSB RMS.
    assert np.sqrt(np.mean(err ** 2)) <= 2 * lsb
    assert np.quantile(np.abs(err), 0.999) <= 8 * lsb


def test_gate_orders_of_every_framework_map_to_z_r_n():
    z, r, n = (np.full((2, 3), v, np.float32) for v in (1, 2, 3))
    for source, stacked in (("onnx", [z, r, n]), ("keras", [z, r, n]), ("pytorch", [r, z, n])):
        canonical = to_canonical_gate_order(np.concatenate(stacked), source, cell="gru")
        assert [float(g[0, 0]) for g in canonical] == [1, 2, 3], source
