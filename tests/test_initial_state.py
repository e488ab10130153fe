"""Layers that start from a constant non-zero state (ONNX initial_h / initial_c initializers):
reset() loads it, the C equals the simulator, and the integer model tracks the float one."""

import dataclasses

import numpy as np
import pytest

from conftest import require_tool
from lstm_edge.bundle import write_bundle
from lstm_edge.calibration import calibrate
from lstm_edge.errors import UnsupportedModelError
from lstm_edge.hostbuild import build_harness, run_harness
from lstm_edge.ir import BidirectionalLayer
from lstm_edge.quantizer import quantize
from lstm_edge.reference import forward
from lstm_edge.simulator import simulate
from lstm_edge.tflite import export_tflite
from model_factory import random_model, signal_like


def with_states(layer, rng):
    if isinstance(layer, BidirectionalLayer):
        return dataclasses.replace(layer, forward=with_states(layer.forward, rng),
                                   backward=with_states(layer.backward, rng))
    extra = {"initial_c": rng.uniform(-1.5, 1.5, layer.hidden_size)} if hasattr(layer, "initial_c") else {}
    return dataclasses.replace(layer, initial_h=rng.uniform(-0.6, 0.6, layer.hidden_size), **extra)


def stateful_model(kinds, seq):
    rng = np.random.default_rng(len(kinds))
    model = random_model(5, [8] * len(kinds), [(3, "none")], sequence_output=seq, kinds=kinds, seed=4)
    return dataclasses.replace(model, recurrent_layers=tuple(with_states(l, rng) for l in model.recurrent_layers))


@pytest.mark.parametrize("kinds,seq", [(["lstm", "gru"], False), (["gru0"], True), (["bilstm", "lstm"], False)])
def test_c_equals_simulator_and_tracks_float(kinds, seq, tmp_path):
    model = stateful_model(kinds, seq)
    rng = np.random.default_rng(9)
    qmodel = quantize(model, calibrate(model, signal_like(rng, 64, 10, 5)), name="st", max_steps=10)
    x = signal_like(rng, 300, 10, 5)
    x_q = qmodel.input_q.quantize(x)
    expected = simulate(qmodel, x_q)
    exe = build_harness(qmodel, write_bundle(qmodel, tmp_path / "st", model), tmp_path / "b", cc=require_tool("gcc"))
    assert np.array_equal(run_harness(exe, qmodel, x_q, "run"), expected)
    if qmodel.streaming:
        stepped = run_harness(exe, qmodel, x_q, "step")
        assert np.array_equal(stepped if seq else stepped[:, -1], expected)
    # The integer model is as close to the float one as the same model started from zero is: a
    # state that reset() failed to load (or loaded in the wrong scale) costs far more than that.
    assert rms_error(model, qmodel, x) <= 1.5 * rms_error(*zero_start(model, rng), x) + 0.5 * qmodel.output_q.scale


def rms_error(model, qmodel, x):
    err = qmodel.output_q.dequantize(simulate(qmodel, qmodel.input_q.quantize(x))) - forward(model, x)
    return float(np.sqrt(np.mean(err ** 2)))


def zero_start(model, rng):
    zeroed = dataclasses.replace(model, recurrent_layers=tuple(_zeroed(l) for l in model.recurrent_layers))
    return zeroed, quantize(zeroed, calibrate(zeroed, signal_like(rng, 64, 10, 5)), name="z", max_steps=10)


def _zeroed(layer):
    if isinstance(layer, BidirectionalLayer):
        return dataclasses.replace(layer, forward=_zeroed(layer.forward), backward=_zeroed(layer.backward))
    return dataclasses.replace(layer, initial_h=None, **({"initial_c": None} if hasattr(layer, "initial_c") else {}))


def test_the_state_really_matters():
    """Guard: the initial state changes the float outputs, so the tests above can tell."""
    model = stateful_model(["lstm", "gru"], True)
    zeroed = dataclasses.replace(model, recurrent_layers=tuple(_zeroed(l) for l in model.recurrent_layers))
    x = signal_like(np.random.default_rng(1), 8, 6, 5)
    assert np.max(np.abs(forward(model, x)[:, 0] - forward(zeroed, x)[:, 0])) > 0.05


def test_tflite_export_refuses_a_non_zero_start_state():
    model = stateful_model(["lstm"], False)
    qmodel = quantize(model, calibrate(model, signal_like(np.random.default_rng(2), 16, 6, 5)), name="st")
    with pytest.raises(UnsupportedModelError, match="non-zero state"):
        export_tflite(qmodel, 6)
