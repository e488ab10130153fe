"""ONNX gate options in the integer path: LSTM clip (gate pre-activations bounded), input_forget
(f = 1 - i) and peepholes, GRU clip. C == simulator, the options really act, and the int8 model
tracks the float one."""

import dataclasses

import numpy as np
import pytest

from conftest import require_tool
from lstm_edge.bundle import write_bundle
from lstm_edge.calibration import calibrate
from lstm_edge.errors import UnsupportedModelError
from lstm_edge.hostbuild import build_harness, run_harness
from lstm_edge.quantizer import quantize
from lstm_edge.reference import forward
from lstm_edge.simulator import simulate
from lstm_edge.tflite import export_tflite
from model_factory import random_model, signal_like

def peepholes(layer):
    return {"peephole": np.random.default_rng(layer.hidden_size).normal(0, 1.0, (3, layer.hidden_size))}


# key: (layer kinds, options for every layer: a dict or a function of the layer)
OPTIONS = {"clip": ("lstm", {"clip": 0.8}), "input_forget": ("lstm", {"input_forget": True}),
           "both": ("lstm", {"clip": 1.5, "input_forget": True}), "peepholes": ("lstm", peepholes),
           "peepholes_clip": ("lstm", lambda l: dict(peepholes(l), clip=1.0)),
           "gru_clip": ("gru", {"clip": 0.7}), "gru0_clip": ("gru0", {"clip": 0.7})}


def with_options(model, options):
    layers = tuple(dataclasses.replace(l, **(options(l) if callable(options) else options))
                   for l in model.recurrent_layers)
    return dataclasses.replace(model, recurrent_layers=layers)


def compiled(key, seq=True):
    kind, options = OPTIONS[key]
    base = random_model(6, [16, 12], [(4, "none")], sequence_output=seq, seed=5, weight_std=1.5, kinds=[kind] * 2)
    model = with_options(base, options)
    rng = np.random.default_rng(2)
    qmodel = quantize(model, calibrate(model, signal_like(rng, 64, 10, 6, scale=2.0)), name="o")
    return base, model, qmodel, signal_like(rng, 400, 10, 6, scale=2.0)


def rms(model, qmodel, x):
    err = qmodel.output_q.dequantize(simulate(qmodel, qmodel.input_q.quantize(x))) - forward(model, x)
    return float(np.sqrt(np.mean(err ** 2)))


@pytest.mark.parametrize("cc", ["gcc", "clang"])
@pytest.mark.parametrize("key", sorted(OPTIONS))
def test_c_equals_simulator(key, cc, tmp_path):
    base, model, qmodel, x = compiled(key)
    x_q = np.concatenate([qmodel.input_q.quantize(x), np.random.default_rng(3).integers(-128, 128, (600, 10, 6))
                          .astype(np.int8)])
    exe = build_harness(qmodel, write_bundle(qmodel, tmp_path / "o", model), tmp_path / "b", cc=require_tool(cc))
    expected = simulate(qmodel, x_q)
    assert np.array_equal(run_harness(exe, qmodel, x_q, "run"), expected)
    assert np.array_equal(run_harness(exe, qmodel, x_q, "step"), expected)


@pytest.mark.parametrize("key", sorted(OPTIONS))
def test_options_act_and_int8_tracks_float(key):
    base, model, qmodel, x = compiled(key, seq=False)
    # The option changes the float model's outputs noticeably, so the comparisons below can tell.
    assert np.max(np.abs(forward(model, x) - forward(base, x))) > 0.05
    limit = qmodel.recurrent_layers[0].gate_clip
    if limit:  # the traced pre-activations are the clipped ones
        _, traces = simulate(qmodel, qmodel.input_q.quantize(x[:50]), trace=True)
        pre = np.concatenate([t.preactivation.ravel() for t in traces[0]])
        assert pre.max() <= limit and pre.min() >= -limit and np.mean(np.abs(pre) == limit) > 0.01
    # As close to float as the same model without the option: the option's integer form costs nothing
    # beyond the rounding of clip to Q3.12 (half a step of 2^-12).
    qbase = quantize(base, calibrate(base, signal_like(np.random.default_rng(2), 64, 10, 6, scale=2.0)), name="b")
    assert rms(model, qmodel, x) <= 1.5 * rms(base, qbase, x) + 0.5 * qmodel.output_q.scale


@pytest.mark.parametrize("key", ["clip", "peepholes"])
def test_tflite_export_refuses_onnx_gate_options(key):
    _, _, qmodel, _ = compiled(key)
    with pytest.raises(UnsupportedModelError, match="clip, input_forget or peepholes"):
        export_tflite(qmodel, 10)
