"""The fast LSTM kernel paths stay the same bits: the offline weight layout, the paths each compiler
selects, warning-free strict builds with arm-none-eabi-gcc, clang and the RISC-V gcc at every
optimisation level, and clang-built firmware running bit-exact under QEMU. (The gcc-built firmware
is in test_targets, the Cortex-M0 high product on the host in test_kernels_c.)"""

import subprocess
import zlib
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import require_tool
from lstm_edge.bundle import write_bundle
from lstm_edge.calibration import calibrate
from lstm_edge.codegen import check_lstm_offset_bounds, lstm_unit_blocks
from lstm_edge.cross import build_firmware, chunk_steps, run_firmware
from lstm_edge.errors import QuantizationError
from lstm_edge.hostbuild import STRICT_FLAGS
from lstm_edge.quantizer import quantize
from lstm_edge.simulator import simulate
from lstm_edge.targets import TARGETS
from model_factory import random_model, signal_like
from test_bitexact import inputs_for

GCC_CORES = ["cortex-m0plus", "cortex-m3", "cortex-m4", "cortex-m7", "cortex-m33"]
CLANG_TARGETS = {"cortex-m0plus": ["--target=thumbv6m-none-eabi", "-mcpu=cortex-m0plus"],
                 "cortex-m3": ["--target=thumbv7m-none-eabi", "-mcpu=cortex-m3"],
                 "cortex-m4": ["--target=thumbv7em-none-eabi", "-mcpu=cortex-m4"],
                 "cortex-m33": ["--target=thumbv8m.main-none-eabi", "-mcpu=cortex-m33"]}
OPTS = ["-O0", "-O1", "-Os", "-O2", "-O3"]


@pytest.mark.parametrize("columns", range(1, 10))
def test_unit_blocks_layout(columns):
    rng = np.random.default_rng(columns)
    w = rng.integers(-128, 128, (4, 3, columns)).astype(np.int8)
    blocks = lstm_unit_blocks(w)
    assert blocks.dtype == np.uint8 and blocks.shape == (3, -(-columns // 4), 4, 4)
    for j in range(3):
        for k in range(4 * blocks.shape[1]):
            for g in range(4):
                want = int(w[g, j, k]) + 128 if k < columns else 128
                assert blocks[j, k // 4, g, k % 4] == want


def test_offset_bound_is_checked():
    layer = SimpleNamespace(name="big", input_size=50_000, hidden_size=4,
                            input_bias=np.zeros((4, 4), np.int32), recurrent_bias=np.zeros((4, 4), np.int32))
    with pytest.raises(QuantizationError, match="too many"):
        check_lstm_offset_bounds(layer)
    check_lstm_offset_bounds(SimpleNamespace(name="ok", input_size=4096, hidden_size=512,
                                             input_bias=np.full((4, 512), 1 << 20, np.int32),
                                             recurrent_bias=np.zeros((4, 512), np.int32)))


def build(tmp_path, key="i3_h5_7_last_dense", input_size=3, hidden=(5, 7), head=((4, "none"),), seq=False):
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    model = random_model(input_size, list(hidden), list(head), sequence_output=seq, seed=7)
    qmodel = quantize(model, calibrate(model, signal_like(rng, 64, 12, input_size)), name=f"f_{key}")
    x_q = inputs_for(qmodel, rng, input_size)
    return qmodel, write_bundle(qmodel, tmp_path / key, model), x_q[np.linspace(0, len(x_q) - 1, 40).astype(int)]


@pytest.fixture(scope="module")
def odd_model(tmp_path_factory):
    """Sizes that are not multiples of 4 (tails, padded blocks, odd state offsets), two layers, a head."""
    return build(tmp_path_factory.mktemp("odd"))


def newlib_include() -> str:
    out = subprocess.run(["arm-none-eabi-gcc", "-xc", "-E", "-H", "-"], input=b"#include <string.h>\n",
                         capture_output=True).stderr.decode()
    header = next(line.split()[-1] for line in out.splitlines() if line.rstrip().endswith("/string.h"))
    return header.rsplit("/", 1)[0]


@pytest.mark.parametrize("core", GCC_CORES)
def test_strict_builds_with_arm_gcc(odd_model, core, tmp_path):
    cc = require_tool("arm-none-eabi-gcc")
    qmodel, out, _ = odd_model
    for opt in OPTS:
        subprocess.run([cc, *TARGETS[core].cflags, *STRICT_FLAGS, opt, "-c", str(out / f"{qmodel.name}.c"),
                        "-o", str(tmp_path / "m.o")], check=True)


def test_strict_builds_with_riscv_gcc(odd_model, tmp_path):
    cc = require_tool("riscv64-unknown-elf-gcc")
    qmodel, out, _ = odd_model
    for opt in OPTS:
        subprocess.run([cc, *TARGETS["rv32imc"].cflags, *STRICT_FLAGS, opt, "-c", str(out / f"{qmodel.name}.c"),
                        "-o", str(tmp_path / "m.o")], check=True)


@pytest.mark.parametrize("core", sorted(CLANG_TARGETS))
def test_strict_builds_with_clang(odd_model, core, tmp_path):
    clang = require_tool("clang")
    require_tool("arm-none-eabi-gcc")
    qmodel, out, _ = odd_model
    for opt in OPTS:
        subprocess.run([clang, *CLANG_TARGETS[core], "-mfloat-abi=soft", "-isystem", newlib_include(), *STRICT_FLAGS,
                        opt, "-c", str(out / f"{qmodel.name}.c"), "-o", str(tmp_path / "m.o")], check=True)


def disassembly(core: str, qmodel, out, tmp_path, opt: str) -> str:
    obj = tmp_path / f"{core}.o"
    subprocess.run(["arm-none-eabi-gcc", *TARGETS[core].cflags, *STRICT_FLAGS, opt, "-c",
                    str(out / f"{qmodel.name}.c"), "-o", str(obj)], check=True)
    return subprocess.run(["arm-none-eabi-objdump", "-d", str(obj)], capture_output=True, text=True,
                          check=True).stdout


def test_each_core_gets_its_path(odd_model, tmp_path):
    """DSP cores multiply-accumulate with SMLAD; ARMv6-M does without the library's 64-bit multiply;
    the M3 (no DSP) runs the portable C."""
    require_tool("arm-none-eabi-objdump")
    qmodel, out, _ = odd_model
    m4 = disassembly("cortex-m4", qmodel, out, tmp_path, "-O2")
    assert "smlad" in m4 and "uxtb16" in m4 and "sxtb16" in m4 and "__aeabi_ldivmod" not in m4
    m0 = disassembly("cortex-m0plus", qmodel, out, tmp_path, "-Os")
    assert "__aeabi_lmul" not in m0 and "__muldi3" not in m0 and "__aeabi_ldivmod" not in m0
    m3 = disassembly("cortex-m3", qmodel, out, tmp_path, "-O2")
    assert "smlad" not in m3 and ("smull" in m3 or "smlal" in m3)


@pytest.mark.parametrize("core", ["cortex-m0plus", "cortex-m4"])
def test_clang_built_firmware_is_bit_exact(odd_model, core, tmp_path):
    clang = require_tool("clang")
    require_tool(TARGETS[core].qemu)
    qmodel, out, x_q = odd_model
    target = TARGETS[core]
    elf = build_firmware(qmodel, out, tmp_path, target, "-O2", chunk_steps(qmodel, target, x_q.shape[1]),
                         compiler=[clang, *CLANG_TARGETS[core], "-mfloat-abi=soft", "-isystem", newlib_include()])
    result = run_firmware(elf, target, qmodel, x_q, tmp_path)
    expected = simulate(qmodel, x_q)
    assert np.array_equal(result.run, expected)
    assert np.array_equal(result.step[:, -1], expected)
