"""Cross-compile the generated C into a small test firmware for a microcontroller target and run it
under QEMU (used by `verify --target`, the footprint report's tests and the benchmarks).

The firmware is the model, templates/harness/mcu_main.c, and our own startup code, semihosting calls
and linker scripts (templates/targets/). Inputs and outputs travel through semihosting files in the
working folder QEMU runs in.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .codegen import templates_dir
from .errors import ToolchainError
from .hostbuild import STRICT_FLAGS, _run
from .quantized_model import QuantizedModel
from .targets import Target, templates_targets_dir

SECTION_FLAGS = ("-ffunction-sections", "-fdata-sections")
END_MAGIC = 0x4C534544
QEMU_TIMEOUT_S = 1800


def model_object(model: QuantizedModel, c_dir, work_dir, target: Target, opt: str, compiler=None) -> Path:
    """NAME.c compiled for the target with the strict flags (what a firmware build would link). `compiler`:
    another command line to compile it with (e.g. clang with its --target flags) instead of the target's gcc."""
    c_dir, work_dir = Path(c_dir), Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    obj = work_dir / f"{model.name}.o"
    cc = list(compiler) if compiler else [target.compiler, *target.cflags]
    _run([*cc, *STRICT_FLAGS, opt, *SECTION_FLAGS, "-c", str(c_dir / f"{model.name}.c"), "-o", str(obj)],
         f"compiling {model.name}.c for {target.name} {opt} with {Path(cc[0]).name}")
    return obj


def chunk_steps(model: QuantizedModel, target: Target, steps: int) -> int:
    """Steps per run() call of the harness: its input and output buffers fit the target's RAM budget
    (a window model's run() takes the whole sequence)."""
    if not model.streaming:
        return steps
    return max(1, min(steps, target.io_budget // (model.input_size + model.output_size)))


def build_firmware(model: QuantizedModel, c_dir, work_dir, target: Target, opt: str, chunk: int,
                   compiler=None) -> Path:
    """Link the verification firmware for `target`; returns the ELF file (`compiler`: see model_object)."""
    c_dir, work_dir = Path(c_dir), Path(work_dir).resolve()
    obj = model_object(model, c_dir, work_dir, target, opt, compiler)
    targets = templates_targets_dir()
    common = targets / "common"
    support = [templates_dir() / "harness" / "mcu_main.c", common / "startup.c", common / "semihosting.c"]
    if target.arch == "riscv":
        support.append(common / "startup_riscv.S")
    objects = [obj]
    for src in support:
        out = work_dir / f"{src.stem}.o"
        _run([target.compiler, *target.cflags, "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", *SECTION_FLAGS,
              f"-DMODEL={model.name}", f"-DMODEL_UPPER={model.name.upper()}", f"-DCHUNK_STEPS={chunk}",
              *(["-DLSTM_EDGE_TRAP_UNALIGNED"] if target.trap_unaligned else []),
              "-I", str(common), "-I", str(c_dir), "-c", str(src), "-o", str(out)],
             f"compiling {src.name} for {target.name}")
        objects.append(out)
    elf = work_dir / "firmware.elf"
    script = common / ("cortex-m.ld" if target.arch == "arm" else "riscv.ld")
    _run([target.compiler, *target.cflags, "-nostartfiles", "-T", str(script), "-L", str(targets / target.name),
          "-Wl,--gc-sections", *map(str, objects), "-o", str(elf)], f"linking the {target.name} firmware")
    return elf


@dataclass
class TargetRun:
    """Outputs of one firmware run: run() [N, T, O] or [N, O], step() [N, T, O] ([N, 0, O] for a window
    model, which has no step()), stack bytes used by the first call(s)."""

    run: np.ndarray
    step: np.ndarray
    stack_run: int
    stack_step: int
    log: str = ""  # what QEMU printed (semihosting console, plugin output)


def run_firmware(elf: Path, target: Target, model: QuantizedModel, x_q: np.ndarray, work_dir,
                 timeout: Optional[float] = QEMU_TIMEOUT_S, extra_qemu=()) -> TargetRun:
    """Run the firmware under QEMU on x_q [N, T, I] int8 from reset for every sequence."""
    work_dir = Path(work_dir).resolve()
    elf = Path(elf).resolve()
    x_q = np.ascontiguousarray(x_q, dtype=np.int8)
    n, steps, _ = x_q.shape
    (work_dir / "lstm_edge_in.bin").write_bytes(np.array([n, steps], dtype="<i4").tobytes() + x_q.tobytes())
    out_path = work_dir / "lstm_edge_out.bin"
    out_path.unlink(missing_ok=True)
    cmd = target.qemu_command(elf) + list(extra_qemu)
    try:
        result = subprocess.run(cmd, cwd=str(work_dir), capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ToolchainError(f"{target.name}: the firmware did not finish under {target.qemu} within {timeout:.0f} s")
    except OSError as exc:
        raise ToolchainError(f"{target.name}: cannot run {target.qemu} ({exc})")
    if result.returncode != 0:
        said = (result.stdout + result.stderr).decode(errors="replace").strip().splitlines()
        raise ToolchainError(f"{target.name}: the firmware failed under {target.qemu} -M {target.machine} "
                             f"(exit {result.returncode}){': ' + said[0] if said else ''}")
    o = model.output_size
    per_run = steps if model.sequence_output else 1
    data = np.frombuffer(out_path.read_bytes() if out_path.exists() else b"", dtype=np.int8)
    per_step = steps if model.streaming else 0
    body = n * (per_run + per_step) * o
    if data.size != body + 12 or int(data[body:].view("<i4")[2]) != END_MAGIC:
        raise ToolchainError(f"{target.name}: the firmware wrote {data.size} bytes, expected {body + 12}")
    y = data[:body].reshape(n, per_run + per_step, o)
    stack_run, stack_step = (int(v) for v in data[body:].view("<i4")[:2])
    run_out = y[:, :per_run] if model.sequence_output else y[:, 0]
    return TargetRun(run=run_out.copy(), step=y[:, per_run:].copy(), stack_run=stack_run, stack_step=stack_step,
                     log=(result.stdout + result.stderr).decode(errors="replace"))
