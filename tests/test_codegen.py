"""Properties of the generated C beyond its numbers: self-contained (no libc, no libm, no float),
no mutable globals, every exported symbol prefixed so two models link into one program."""

import subprocess

import numpy as np
import pytest

from conftest import require_tool
from lstm_edge.bundle import write_bundle
from lstm_edge.calibration import calibrate
from lstm_edge.naming import default_prefix, model_prefix
from lstm_edge.errors import LstmEdgeError
from lstm_edge.quantizer import quantize
from lstm_edge.simulator import simulate
from model_factory import random_model, signal_like


def compiled(tmp_path, name, hidden, head, seq, seed):
    model = random_model(5, hidden, head, sequence_output=seq, seed=seed)
    qmodel = quantize(model, calibrate(model, signal_like(np.random.default_rng(seed), 32, 8, 5)), name=name)
    return qmodel, write_bundle(qmodel, tmp_path / name, model)


@pytest.mark.parametrize("cc", ["gcc", "clang"])
@pytest.mark.parametrize("opt", ["-O0", "-O2", "-Os"])
def test_object_needs_nothing_and_exports_only_prefixed_symbols(tmp_path, cc, opt):
    compiler = require_tool(cc)
    nm = require_tool("nm")
    qmodel, out = compiled(tmp_path, "kws", [16, 8], [(6, "relu"), (3, "tanh")], False, 1)
    obj = tmp_path / "kws.o"
    # -mgeneral-regs-only: the compiler refuses any floating-point operation. -fno-pic as on an MCU:
    # with PIC, const tables holding pointers go to .data.rel.ro and look like data to nm.
    subprocess.run([compiler, "-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-Wconversion",
                    "-mgeneral-regs-only", "-fno-pic", opt, "-c", str(out / "kws.c"), "-o", str(obj)], check=True)
    symbols = subprocess.run([nm, str(obj)], capture_output=True, text=True, check=True).stdout.split("\n")
    entries = [line.split() for line in symbols if line.strip()]
    undefined = [e[-1] for e in entries if e[-2] == "U"]
    assert undefined == [], f"calls outside the model: {undefined}"  # no malloc, memcpy, libm
    exported = sorted(e[-1] for e in entries if e[-2] in "TDBRCGS")
    assert exported == ["kws_reset", "kws_run", "kws_step"]
    writable = [e[-1] for e in entries if e[-2] in "dDbBcC"]
    assert writable == [], f"mutable global state: {writable}"


def test_two_models_link_into_one_program(tmp_path):
    cc = require_tool("gcc")
    qa, a = compiled(tmp_path, "alpha", [7], [(3, "none")], False, 2)
    qb, b = compiled(tmp_path, "beta", [9, 4], [], True, 3)
    main = tmp_path / "main.c"
    main.write_text("""
#include <stdio.h>
#include "alpha.h"
#include "beta.h"
int main(void) {
    alpha_state_t sa; beta_state_t sb;
    int8_t in[4 * 5], oa[ALPHA_OUTPUT_SIZE], ob[4 * BETA_OUTPUT_SIZE];
    int k;
    for (k = 0; k < 4 * 5; ++k) in[k] = (int8_t)(k * 13 - 100);
    alpha_reset(&sa); beta_reset(&sb);
    alpha_run(&sa, in, 4, oa); beta_run(&sb, in, 4, ob);
    for (k = 0; k < ALPHA_OUTPUT_SIZE; ++k) printf("%d ", oa[k]);
    for (k = 0; k < 4 * BETA_OUTPUT_SIZE; ++k) printf("%d ", ob[k]);
    return 0;
}
""")
    exe = tmp_path / "both"
    subprocess.run([cc, "-std=c99", "-Wall", "-Werror", "-I", str(a), "-I", str(b), str(main), str(a / "alpha.c"),
                    str(b / "beta.c"), "-o", str(exe)], check=True)
    printed = np.array(subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split(),
                       dtype=np.int64)
    x = (np.arange(20) * 13 - 100).astype(np.int8).reshape(1, 4, 5)
    expected = np.concatenate([simulate(qa, x).ravel(), simulate(qb, x).ravel()])
    assert np.array_equal(printed, expected)


def test_model_names():
    assert model_prefix("kws_v2") == "kws_v2"
    for bad in ("2kws", "kws-v2", "int", "_kws", "", "k" * 41):
        with pytest.raises(LstmEdgeError):
            model_prefix(bad)
    assert default_prefix("my-kws.v2") == "my_kws_v2"
    assert default_prefix("123") == "model_123"
    assert default_prefix("static") == "static_model"


@pytest.mark.parametrize("core", ["cortex-m0plus", "cortex-m4", "rv32imc"])
def test_every_layer_kind_builds_strict_on_the_cross_compilers(tmp_path, core):
    """GRU (both kinds), bidirectional window models, initial states and ONNX clip/input_forget:
    warning-free with the strict flags on the MCU compilers too, at every optimisation level."""
    import dataclasses

    from lstm_edge.hostbuild import STRICT_FLAGS
    from lstm_edge.targets import TARGETS
    target = TARGETS[core]
    compiler = require_tool(target.compiler)
    rng = np.random.default_rng(4)
    base = random_model(5, [6, 7, 4], [(3, "tanh")], sequence_output=False, kinds=["gru", "bilstm", "gru0"], seed=6)
    first = dataclasses.replace(base.recurrent_layers[0], initial_h=rng.uniform(-0.5, 0.5, 6))
    model = dataclasses.replace(base, recurrent_layers=(first,) + base.recurrent_layers[1:])
    lstm = random_model(5, [6], seed=7)
    options = dataclasses.replace(lstm, recurrent_layers=(dataclasses.replace(
        lstm.recurrent_layers[0], clip=1.0, input_forget=True, initial_c=rng.uniform(-1, 1, 6)),))
    for k, m in enumerate((model, options)):
        q = quantize(m, calibrate(m, signal_like(rng, 16, 6, 5)), name=f"k{k}", max_steps=6)
        out = write_bundle(q, tmp_path / f"k{k}", m)
        for opt in ("-O0", "-O2", "-Os"):
            subprocess.run([compiler, *target.cflags, *STRICT_FLAGS, opt, "-c", str(out / f"k{k}.c"),
                            "-o", str(tmp_path / "m.o")], check=True)
