"""`compile` writes NAME.footprint.txt/.json, and its numbers are what the toolchain measures for the
same build: arm-none-eabi-size on the object compiled with the recorded flags, symbol sizes in the
linked firmware, and the stack actually used on the emulated Cortex-M4 (painted stack)."""

import json
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REPO, require_tool
from lstm_edge import targets as targets_mod
from lstm_edge.bundle import load_bundle_quantized
from lstm_edge.cli import main
from lstm_edge.cross import build_firmware, chunk_steps, run_firmware
from lstm_edge.footprint import JSON_SUFFIX, TXT_SUFFIX, from_json
from lstm_edge.targets import TARGETS
from lstm_edge.verify import default_inputs

EXAMPLE = REPO / "examples" / "japanese_vowels"


def compile_example(out, *extra):
    result = CliRunner().invoke(main, ["compile", str(EXAMPLE / "model.onnx"), "--calib", str(EXAMPLE / "calib.npy"),
                                       "-o", str(out), "--name", "kws", *extra])
    assert result.exit_code == 0, result.output
    return result.output


def test_footprint_matches_the_toolchain(tmp_path):
    for tool in ("arm-none-eabi-gcc", "arm-none-eabi-size", "arm-none-eabi-nm", "qemu-system-arm"):
        require_tool(tool)
    out = tmp_path / "kws"
    printed = compile_example(out)
    fp = from_json((out / f"kws{JSON_SUFFIX}").read_text())
    assert fp.measured and fp.target == "cortex-m4" and fp.opt == "-O2"
    assert f"flash {fp.flash['total']:,} B" in printed and f"code {fp.flash['code']:,} B" in printed

    # the same object, built here with the recorded compiler and flags
    compiler, _version, *flags = fp.toolchain.split()
    assert compiler == "arm-none-eabi-gcc" and "-mcpu=cortex-m4" in flags and "-O2" in flags
    obj = tmp_path / "kws.o"
    subprocess.run([compiler, *flags, "-c", str(out / "kws.c"), "-o", str(obj)], check=True, cwd=tmp_path)
    berkeley = subprocess.run(["arm-none-eabi-size", str(obj)], capture_output=True, text=True, check=True).stdout
    text, data, bss = (int(v) for v in berkeley.splitlines()[1].split()[:3])
    assert fp.flash["total"] == text + data and data == bss == fp.static_data_bytes == 0
    sysv = subprocess.run(["arm-none-eabi-size", "-A", str(obj)], capture_output=True, text=True, check=True).stdout
    code = sum(int(line.split()[1]) for line in sysv.splitlines() if line.startswith(".text"))
    assert fp.flash["code"] == code
    assert fp.flash["weights"] + fp.flash["biases_and_parameters"] + fp.flash["tables"] == text - code

    # every const array has the same size in a linked firmware (cortex-m4 -O2, the verify harness)
    qmodel = load_bundle_quantized(out)
    target = TARGETS["cortex-m4"]
    elf = build_firmware(qmodel, out, tmp_path / "fw", target, "-O2", chunk_steps(qmodel, target, 8))
    nm = subprocess.run(["arm-none-eabi-nm", "-S", str(elf)], capture_output=True, text=True, check=True).stdout
    linked = {p[3]: int(p[1], 16) for p in (line.split() for line in nm.splitlines()) if len(p) == 4}
    assert fp.arrays and all(linked[name] == size for name, size in fp.arrays.items())
    assert fp.arrays["sigmoid_table_uint16"] == 512 and fp.flash["tables"] == 512
    # 12 inputs and 32 units are multiples of 4: the kernel's blocks need no padding columns here
    assert fp.flash["weights"] == qmodel.recurrent_layers[0].input_weights.size + qmodel.recurrent_layers[0].recurrent_weights.size \
        + qmodel.head[0].weights.size

    # RAM: the state struct, and the worst-case stack = the stack painted and measured on the emulated M4
    assert fp.state_bytes == qmodel.state_bytes == 3 * 32
    measured = run_firmware(elf, target, qmodel, default_inputs(qmodel, 4, 8), tmp_path / "fw")
    assert fp.stack_by_function["kws_run"] == measured.stack_run
    assert fp.stack_by_function["kws_step"] == measured.stack_step
    assert fp.stack_bytes == max(fp.stack_by_function.values()) >= fp.scratch_bytes == 32

    # the human file and `inspect` say the same
    txt = (out / f"kws{TXT_SUFFIX}").read_text()
    shown = CliRunner().invoke(main, ["inspect", str(out)]).output
    for value in (fp.flash["total"], fp.flash["code"], fp.flash["weights"], fp.stack_bytes, fp.state_bytes):
        assert f"{value:,} B" in txt and f"{value:,} B" in shown


def test_footprint_for_another_core(tmp_path):
    require_tool("riscv64-unknown-elf-gcc")
    out = tmp_path / "kws"
    compile_example(out, "--footprint-target", "rv32imc", "--footprint-opt", "-Os")
    fp = json.loads((out / f"kws{JSON_SUFFIX}").read_text())
    assert fp["target"] == "rv32imc" and fp["opt"] == "-Os" and "-march=rv32imc" in fp["toolchain"]
    assert fp["flash"]["code"] > 0


def test_footprint_without_the_toolchain(tmp_path, monkeypatch):
    real_which = targets_mod.shutil.which
    monkeypatch.setattr(targets_mod.shutil, "which", lambda name: None if "none-eabi" in name else real_which(name))
    out = tmp_path / "kws"
    printed = compile_example(out)
    assert "code n/a" in printed and "apt-get install" in printed and "gcc-arm-none-eabi" in printed
    fp = from_json((out / f"kws{JSON_SUFFIX}").read_text())
    assert not fp.measured and fp.flash["code"] is None and fp.stack_bytes is None
    qmodel = load_bundle_quantized(out)
    # the arrays are known from the C itself
    assert fp.flash["weights"] == sum(int(np.asarray(a).size) for a in (
        qmodel.recurrent_layers[0].input_weights, qmodel.recurrent_layers[0].recurrent_weights, qmodel.head[0].weights))
    assert fp.flash["tables"] == 512
    assert "n/a" in (out / f"kws{TXT_SUFFIX}").read_text()


def test_compile_refuses_an_unknown_footprint_target(tmp_path):
    result = CliRunner().invoke(main, ["compile", str(EXAMPLE / "model.onnx"), "--calib", str(EXAMPLE / "calib.npy"),
                                       "-o", str(tmp_path / "x"), "--footprint-target", "cortex-m5"])
    assert result.exit_code == 2 and not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_target_has_its_memory_map(name):
    from lstm_edge.targets import templates_targets_dir
    assert (templates_targets_dir() / name / "memory.ld").is_file()
