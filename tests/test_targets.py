"""`verify --target`: the generated C, cross-compiled for every microcontroller target and run under
QEMU, equals the simulator integer for integer (run() and step() x T), for models of 1-3 layers,
with and without heads, I and H up to 128; a wrong C is caught; a missing toolchain is one clear error.

Sequences are few (the targets are emulated): 40 sequences x 12 steps per model, drawn from the
uniform, calibration-like, saturating and constant inputs of test_bitexact.
"""

import os
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import require_tool
from lstm_edge import targets as targets_mod
from lstm_edge.bundle import write_bundle
from lstm_edge.calibration import calibrate
from lstm_edge.cli import main
from lstm_edge.errors import ToolchainError
from lstm_edge.quantizer import quantize
from lstm_edge.targets import TARGET_NAMES, TARGETS
from lstm_edge.verify import VerifyReport, check_c_against_simulator, check_targets_against_simulator
from model_factory import random_model, signal_like
from test_bitexact import inputs_for

# (input size, hidden sizes, head, sequence output, weight std, layer kinds)
CONFIGS = {
    "i1_h1_seq": (1, [1], [], True, 0.5, ()),
    "i3_h5x2_last_dense": (3, [5, 5], [(4, "none")], False, 0.5, ()),
    "i16_h32_seq_relu_head": (16, [32], [(8, "relu"), (3, "none")], True, 0.5, ()),
    "i64_h128_seq": (64, [128], [], True, 0.5, ()),
    "i128_h17_33_8_last_sigmoid": (128, [17, 33, 8], [(5, "sigmoid"), (2, "none")], False, 0.5, ()),
    "i7_h128_64_32_seq_head": (7, [128, 64, 32], [(6, "none")], True, 0.5, ()),
    "i12_h24x2_saturating": (12, [24, 24], [(9, "none")], False, 4.0, ()),
    "gru_lstm_i5_h24_16_last_tanh": (5, [24, 16], [(3, "tanh")], False, 0.5, ("gru", "lstm")),
    "bilstm_i6_h16_seq": (6, [16], [], True, 0.5, ("bilstm",)),
}
STEPS = 12
SEQUENCES = 40
CROSS_TOOLS = ("arm-none-eabi-gcc", "arm-none-eabi-size", "arm-none-eabi-nm", "qemu-system-arm",
               "riscv64-unknown-elf-gcc", "riscv64-unknown-elf-size", "riscv64-unknown-elf-nm", "qemu-system-riscv32")


@pytest.fixture(scope="module")
def cross_tools():
    for tool in CROSS_TOOLS:
        require_tool(tool)
    try:
        targets_mod.check_tools(list(TARGETS))
    except ToolchainError as exc:  # a compiler without its C library
        (pytest.fail if os.environ.get("CI", "").lower() == "true" else pytest.skip)(str(exc))


def build(key, out_dir):
    input_size, hidden, head, seq, std, kinds = CONFIGS[key]
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    model = random_model(input_size, hidden, head, sequence_output=seq, seed=len(key), weight_std=std, kinds=kinds)
    calib = signal_like(rng, 64, STEPS, input_size, scale=2.0 if std > 1 else 1.0)
    qmodel = quantize(model, calibrate(model, calib), name=f"t_{key}", max_steps=STEPS)
    x_q = inputs_for(qmodel, rng, input_size)
    x_q = x_q[np.linspace(0, len(x_q) - 1, SEQUENCES).astype(int)]
    return qmodel, write_bundle(qmodel, out_dir, model), x_q


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_verify_on_all_targets(key, cross_tools, tmp_path):
    qmodel, out, x_q = build(key, tmp_path / "out")
    report = VerifyReport(sequences=SEQUENCES, steps=STEPS)
    check_c_against_simulator(qmodel, out, x_q, [require_tool("gcc")], ["-O2"], report)
    check_targets_against_simulator(qmodel, out, x_q, list(TARGETS), [], report)
    assert report.mismatches == []
    assert len(report.builds) == len(TARGET_NAMES)
    assert set(report.stack_bytes) == {TARGETS[t].describe(TARGETS[t].default_opt) for t in TARGETS}
    for run_bytes, step_bytes in report.stack_bytes.values():
        assert 0 < run_bytes < 4096 and (step_bytes is None or 0 < step_bytes < 4096)


def test_cli_verify_targets_and_a_wrong_c_is_caught(cross_tools, tmp_path):
    qmodel, out, _ = build("i16_h32_seq_relu_head", tmp_path / "out")
    runner = CliRunner()
    ok = runner.invoke(main, ["verify", str(out), "--target", "cortex-m0plus", "--target", "rv32imc",
                              "--sequences", "8", "--steps", "5"])
    assert ok.exit_code == 0, ok.output
    assert "OK: C == simulator on 8 sequences x 5 steps" in ok.output
    assert "cortex-m0plus -Os (qemu microbit)" in ok.output and "rv32imc -O2 (qemu virt)" in ok.output
    assert "ccO2" not in ok.output  # host only when asked for
    # one folded bias changed by one: the targets must see it
    c_file = out / f"{qmodel.name}.c"
    text = c_file.read_text()
    marker = "layer0_input_bias["
    start = text.index("{", text.index(marker)) + 1
    first = text[start:text.index(",", start)].strip()
    c_file.write_text(text[:start] + " " + str(int(first) + 100000) + text[text.index(",", start):])
    bad = runner.invoke(main, ["verify", str(out), "--target", "cortex-m0plus", "--target", "cortex-m4",
                               "--sequences", "8", "--steps", "5"])
    assert bad.exit_code == 1, bad.output
    assert "cortex-m0plus -Os (qemu microbit) run():" in bad.output
    assert "cortex-m4 -O2 (qemu mps2-an386) run():" in bad.output


def test_missing_toolchain_names_the_debian_packages(monkeypatch, tmp_path):
    monkeypatch.setattr(targets_mod.shutil, "which", lambda name: None)
    with pytest.raises(ToolchainError) as exc:
        targets_mod.check_tools(["host", "cortex-m4", "rv32imc"])
    message = str(exc.value)
    for package in ("gcc-arm-none-eabi", "libnewlib-arm-none-eabi", "qemu-system-arm", "gcc-riscv64-unknown-elf",
                    "picolibc-riscv64-unknown-elf", "qemu-system-misc"):
        assert package in message
    assert "arm-none-eabi-gcc" in message and "qemu-system-riscv32" in message
    result = CliRunner().invoke(main, ["verify", str(tmp_path), "--target", "all"])
    assert result.exit_code == 2 and result.output.startswith("error: ") and "apt-get install" in result.output


def test_unknown_target_is_refused(tmp_path):
    result = CliRunner().invoke(main, ["verify", str(tmp_path), "--target", "cortex-m5"])
    assert result.exit_code == 2
    assert "unknown target 'cortex-m5'" in result.output


def test_unaligned_access_faults_on_the_strict_alignment_target(cross_tools, tmp_path):
    """ARMv6-M faults on unaligned halfword/word accesses; QEMU's M0 does not model that, so the
    cortex-m3 firmware turns the trap on: a C that reads a word at an odd address must fail there."""
    qmodel, out, _ = build("i3_h5x2_last_dense", tmp_path / "out")
    assert TARGETS["cortex-m3"].trap_unaligned
    c_file = out / f"{qmodel.name}.c"
    text = c_file.read_text()
    head = f"void {qmodel.name}_reset({qmodel.name}_state_t *s)\n{{\n"
    assert head in text
    c_file.write_text(text.replace(head, head + "    if (*(const volatile uint32_t *)(const void *)"
                                               "((const volatile char *)s + 1) == 1u) { return; }\n"))
    result = CliRunner().invoke(main, ["verify", str(out), "--target", "cortex-m3", "--sequences", "2", "--steps", "2"])
    assert result.exit_code == 2
    assert "cortex-m3: the firmware failed" in result.output and "fault" in result.output
