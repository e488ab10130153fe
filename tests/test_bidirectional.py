"""Bidirectional (window) models: accuracy of the integer model, and the rules of the window API."""

import subprocess

import numpy as np
import pytest

from conftest import require_tool
from lstm_edge.bundle import write_bundle
from lstm_edge.calibration import calibrate
from lstm_edge.errors import InputDataError, QuantizationError
from lstm_edge.ir import BidirectionalLayer, FloatModel
from lstm_edge.quantizer import quantize
from lstm_edge.reference import forward
from lstm_edge.simulator import simulate
from model_factory import random_model, signal_like


@pytest.mark.parametrize("kinds,last_step_from", [(["bilstm"], "final_state"), (["bigru", "lstm"], "final_state"),
                                                  (["bilstm"], "last_index"), (["lstm", "bigru0"], "final_state")])
def test_integer_bidirectional_tracks_float(kinds, last_step_from):
    rng = np.random.default_rng(3)
    model = random_model(6, [12] * len(kinds), [(5, "none")], sequence_output=False, kinds=kinds, seed=4,
                         last_step_from=last_step_from)
    qmodel = quantize(model, calibrate(model, signal_like(rng, 128, 16, 6)), name="b", max_steps=16)
    x = signal_like(rng, 128, 16, 6)
    err = qmodel.output_q.dequantize(simulate(qmodel, qmodel.input_q.quantize(x))) - forward(model, x)
    # Same bound as the unidirectional layers (test_gru.py): ~1 LSB RMS from int8 weights and the
    # Q3.12 / Q0.15 gates; reading the wrong direction's state or step would cost tens of LSB.
    assert np.sqrt(np.mean(err ** 2)) <= 2 * qmodel.output_q.scale


def test_window_length_is_required_and_enforced():
    model = random_model(3, [4], kinds=["bilstm"])
    ranges = calibrate(model, signal_like(np.random.default_rng(0), 8, 6, 3))
    with pytest.raises(QuantizationError, match="--max-steps"):
        quantize(model, ranges, name="b")
    qmodel = quantize(model, ranges, name="b", max_steps=6)
    assert not qmodel.streaming and qmodel.max_steps == 6
    with pytest.raises(InputDataError, match="window of 6"):
        simulate(qmodel, np.zeros((1, 7, 3), np.int8))


def test_sum_merge_is_refused_in_the_integer_path():
    layer = random_model(3, [4], kinds=["bilstm"]).recurrent_layers[0]
    model = FloatModel((BidirectionalLayer(layer.forward, layer.backward, merge="sum"),))
    with pytest.raises(QuantizationError, match="merge mode 'sum'"):
        quantize(model, calibrate(model, signal_like(np.random.default_rng(0), 8, 6, 3)), name="b", max_steps=6)


def test_c_window_api(tmp_path):
    """No step() in the header; run() beyond MAX_STEPS (or <= 0) leaves the output untouched."""
    cc = require_tool("gcc")
    model = random_model(3, [4], [(2, "none")], sequence_output=False, kinds=["bigru"], seed=2)
    qmodel = quantize(model, calibrate(model, signal_like(np.random.default_rng(1), 8, 5, 3)), name="w", max_steps=5)
    out = write_bundle(qmodel, tmp_path / "w", model)
    header = (out / "w.h").read_text()
    assert "w_step" not in header.replace("no step()", "") and "#define W_STREAMING 0" in header
    assert "#define W_MAX_STEPS 5" in header
    main = tmp_path / "main.c"
    main.write_text("""
#include <stdio.h>
#include "w.h"
int main(void) {
    static w_state_t s;
    int8_t in[6 * W_INPUT_SIZE] = {0}, out[W_OUTPUT_SIZE] = {99, 99};
    w_run(&s, in, 6, out);
    w_run(&s, in, 0, out);
    printf("%d %d ", out[0], out[1]);
    w_run(&s, in, 5, out);
    printf("%d %d", out[0], out[1]);
    return 0;
}
""")
    exe = tmp_path / "main"
    subprocess.run([cc, "-std=c99", "-Wall", "-Werror", "-I", str(out), str(main), str(out / "w.c"), "-o", str(exe)],
                   check=True)
    printed = [int(v) for v in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()]
    expected = simulate(qmodel, np.zeros((1, 5, 3), np.int8))[0].tolist()
    assert printed == [99, 99] + expected
