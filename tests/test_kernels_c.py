"""The C kernels against their Python twins, exhaustively where the domain is small:
every int16 input of sigmoid and of tanh at every input shift the quantizer can produce."""

import subprocess

import numpy as np
import pytest

from conftest import require_tool
from lstm_edge import fixedpoint as fp
from lstm_edge.codegen import kernel_source
from lstm_edge.importers import tflite_importer
from lstm_edge.quantizer import MAX_CELL_SCALE_POWER, MIN_CELL_SCALE_POWER

# tanh reads a cell state of scale 2^p with input shift p + 12 (0 is the cell gate): every p the
# quantizer chooses, and every p a pre-quantized .tflite model may bring.
TANH_SHIFTS = list(range(min(MIN_CELL_SCALE_POWER, tflite_importer.MIN_CELL_SCALE_POWER) + 12,
                         max(MAX_CELL_SCALE_POWER, tflite_importer.MAX_CELL_SCALE_POWER) + 13))

PROGRAM = r"""
#include <stdio.h>
%(kernels)s
int main(void)
{
    int32_t x, shift;
    for (x = -32768; x <= 32767; ++x) printf("%%d\n", sigmoid_q15((int16_t)x));
    for (shift = %(lo)d; shift <= %(hi)d; ++shift)
        for (x = -32768; x <= 32767; ++x) printf("%%d\n", tanh_q15((int16_t)x, shift));
    {
        requant_t m;
        int32_t v;
        while (scanf("%%d %%d %%d", &v, &m.multiplier, &m.shift) == 3)
            printf("%%d\n", multiply_by_quantized_multiplier(v, m));
    }
    return 0;
}
"""


# gcc with LSTM_EDGE_NO_LONG_MULTIPLY: the 16 x 16-piece high product of Cortex-M0, forced on the host
@pytest.fixture(scope="module", params=["gcc", "clang", "gcc-no-long-multiply"])
def kernel_program(request, tmp_path_factory):
    cc = require_tool(request.param.split("-")[0])
    defines = ["-DLSTM_EDGE_NO_LONG_MULTIPLY"] if request.param.endswith("no-long-multiply") else []
    work = tmp_path_factory.mktemp(f"kernels_{request.param}")
    src = work / "k.c"
    src.write_text(PROGRAM % {"kernels": kernel_source("fixedpoint.c") + kernel_source("sigmoid_tanh.c"),
                              "lo": min(TANH_SHIFTS + [0]), "hi": max(TANH_SHIFTS)})
    exe = work / "k"
    subprocess.run([cc, "-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-Wconversion", "-O2",
                    "-Wno-unused-function", *defines, str(src), "-o", str(exe)], check=True)
    return exe


def test_sigmoid_tanh_c_equals_python_on_all_inputs(kernel_program):
    lo, hi = min(TANH_SHIFTS + [0]), max(TANH_SHIFTS)
    out = subprocess.run([str(kernel_program)], input=b"", capture_output=True, check=True).stdout
    values = np.array(out.split(), dtype=np.int64)
    x = np.arange(-32768, 32768)
    assert np.array_equal(values[:65536], fp.sigmoid_q15(x))
    for k, shift in enumerate(range(lo, hi + 1)):
        chunk = values[65536 * (k + 1):65536 * (k + 2)]
        assert np.array_equal(chunk, fp.tanh_q15(x, shift)), f"tanh, input shift {shift}"


def test_multiply_by_quantized_multiplier_c_equals_python(kernel_program):
    rng = np.random.default_rng(11)
    rows = []
    for real in np.concatenate([10.0 ** rng.uniform(-9, 1.2, 300), [2.0 ** -15, 1.0, 0.5]]):
        m, s = fp.quantize_multiplier(float(real))
        limit = fp.INT32_MAX >> max(s, 0)
        for v in rng.integers(-limit, limit, 20):
            rows.append((int(v), m, s))
    text = "\n".join(f"{v} {m} {s}" for v, m, s in rows).encode()
    n_fixed = 65536 * (1 + len(range(min(TANH_SHIFTS + [0]), max(TANH_SHIFTS) + 1)))
    out = subprocess.run([str(kernel_program)], input=text, capture_output=True, check=True).stdout
    got = np.array(out.split(), dtype=np.int64)[n_fixed:]
    want = [int(fp.multiply_by_quantized_multiplier(v, m, s)) for v, m, s in rows]
    assert np.array_equal(got, want)
