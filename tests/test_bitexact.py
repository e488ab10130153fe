"""The generated C equals the simulator, integer for integer, on >= 1,000 sequences per model
(random, calibration-like and saturating inputs), for several shapes, with gcc and clang at
-O0 and -O2; and step() called T times equals run() on the whole sequence."""

import zlib

import numpy as np
import pytest

from conftest import require_tool
from lstm_edge.bundle import write_bundle
from lstm_edge.calibration import calibrate
from lstm_edge.hostbuild import build_harness, run_harness
from lstm_edge.quantizer import quantize
from lstm_edge.simulator import simulate
from model_factory import random_model, signal_like

# (input size, hidden sizes, head, sequence output, weight std[, layer kinds])
CONFIGS = {
    "i1_h1": (1, [1], [], True, 0.5),
    "i3_h5x2_last_dense": (3, [5, 5], [(4, "none")], False, 0.5),
    "i16_h32_seq_relu_head": (16, [32], [(8, "relu"), (3, "none")], True, 0.5),
    "i40_h64x2_last_tanh": (40, [64, 64], [(10, "tanh")], False, 0.5),
    "i64_h128_seq": (64, [128], [], True, 0.5),
    "i128_h17_33_8_last_sigmoid": (128, [17, 33, 8], [(5, "sigmoid"), (2, "none")], False, 0.5),
    "i7_h128_64_32_seq_head": (7, [128, 64, 32], [(6, "none")], True, 0.5),
    "i2_h3_last_nohead": (2, [3], [], False, 0.5),
    "i12_h24x2_saturating": (12, [24, 24], [(9, "none")], False, 4.0),
    "gru_i10_h48_seq": (10, [48], [], True, 0.5, ["gru"]),
    "gru0_i33_h20_last_head": (33, [20], [(4, "relu"), (3, "none")], False, 0.5, ["gru0"]),
    "gru_lstm_gru0_i5_h64_32_16": (5, [64, 32, 16], [(6, "tanh")], True, 0.5, ["gru", "lstm", "gru0"]),
    "gru_i12_h24x2_saturating": (12, [24, 24], [(9, "none")], False, 4.0, ["gru", "gru0"]),
    "bilstm_i6_h16_seq": (6, [16], [], True, 0.5, ["bilstm"]),
    "bigru_lstm_i9_h12_20_last": (9, [12, 20], [(5, "none")], False, 0.5, ["bigru", "lstm"]),
    "lstm_bigru0_i4_h8_24_last_head": (4, [8, 24], [(3, "relu"), (2, "none")], False, 0.5, ["lstm", "bigru0"]),
    "bilstm_i5_h10_last_index": (5, [10], [(4, "none")], False, 0.5, ["bilstm"], "last_index"),
}
STEPS = 12


def inputs_for(qmodel, rng, input_size):
    """1,024 int8 sequences: uniform random, calibration-like, and saturating."""
    uniform = rng.integers(-128, 128, (400, STEPS, input_size))
    like_calib = qmodel.input_q.quantize(signal_like(rng, 400, STEPS, input_size)).astype(np.int64)
    extremes = np.where(rng.random((200, STEPS, input_size)) < 0.5, -128, 127)
    constant = np.stack([np.full((STEPS, input_size), v) for v in (-128, 127, 0, qmodel.input_q.zero_point)] * 6)
    return np.concatenate([uniform, like_calib, extremes, constant]).astype(np.int8)


def build_config(key):
    input_size, hidden, head, seq, std, *extra = CONFIGS[key]
    kinds, last_step_from = (list(extra) + [(), "final_state"][len(extra):])[:2]
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    model = random_model(input_size, hidden, head, sequence_output=seq, seed=len(key), weight_std=std,
                         kinds=kinds, last_step_from=last_step_from)
    calib = signal_like(rng, 64, STEPS, input_size, scale=2.0 if std > 1 else 1.0)
    qmodel = quantize(model, calibrate(model, calib), name=f"m_{key}", max_steps=STEPS)
    return model, qmodel, inputs_for(qmodel, rng, input_size)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def compiled(request, tmp_path_factory):
    model, qmodel, x_q = build_config(request.param)
    out = write_bundle(qmodel, tmp_path_factory.mktemp(request.param) / "out", model)
    return qmodel, out, x_q, simulate(qmodel, x_q)


@pytest.mark.parametrize("cc", ["gcc", "clang"])
@pytest.mark.parametrize("opt", ["-O0", "-O2"])
def test_c_equals_simulator(compiled, cc, opt, tmp_path):
    qmodel, out, x_q, expected = compiled
    assert x_q.shape[0] >= 1000
    exe = build_harness(qmodel, out, tmp_path, cc=require_tool(cc), opt=opt)
    got = run_harness(exe, qmodel, x_q, "run")
    assert got.dtype == expected.dtype == np.int8
    assert np.array_equal(got, expected)
    if qmodel.streaming:  # window (bidirectional) models have no step()
        stepped = run_harness(exe, qmodel, x_q, "step")
        assert np.array_equal(stepped if qmodel.sequence_output else stepped[:, -1], got)


@pytest.mark.parametrize("key", ["i12_h24x2_saturating", "gru_i12_h24x2_saturating"])
def test_saturating_config_really_saturates(key):
    """Guard that the saturating configurations exercise the int16 clamps (else they add nothing)."""
    _, qmodel, x_q = build_config(key)
    _, traces = simulate(qmodel, x_q[:200], trace=True)
    pre = np.concatenate([s.preactivation.ravel() for s in traces[0]])
    assert np.mean((pre == 32767) | (pre == -32768)) > 0.01
