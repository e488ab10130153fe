"""Build the generated C with a host compiler and run it on int8 sequences (used by `verify`,
the tests and the benchmarks)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .codegen import templates_dir
from .errors import ToolchainError
from .quantized_model import QuantizedModel

STRICT_FLAGS = ("-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-Wconversion")


def find_compiler(cc: str | None = None) -> str:
    """The compiler to use: `cc` if given, else $CC, else cc, gcc or clang from PATH."""
    for candidate in ([cc] if cc else [os.environ.get("CC"), "cc", "gcc", "clang"]):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    wanted = cc or "cc, gcc or clang"
    raise ToolchainError(f"C compiler {wanted} not found: install one (Debian: apt-get install gcc)")


def _run(cmd, what: str, **kwargs) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(cmd, capture_output=True, **kwargs)
    except OSError as exc:
        raise ToolchainError(f"{what}: cannot run {cmd[0]} ({exc})")
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        first = next((line for line in detail if "error" in line and "returned 1 exit status" not in line
                      or "overflowed" in line), detail[0] if detail else "")
        raise ToolchainError(f"{what} failed (exit {result.returncode}): {first}")
    return result


def build_harness(model: QuantizedModel, c_dir, work_dir, cc: str | None = None, opt: str = "-O2",
                  extra_flags=()) -> Path:
    """Compile c_dir/NAME.c with the strict flags and link the verification harness; returns the executable."""
    compiler = find_compiler(cc)
    c_dir, work_dir = Path(c_dir), Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    name = model.name
    tag = f"{Path(compiler).name}{opt}".replace("-", "")
    obj = work_dir / f"{name}.{tag}.o"
    exe = work_dir / f"harness.{tag}"
    _run([compiler, *STRICT_FLAGS, opt, *extra_flags, "-c", str(c_dir / f"{name}.c"), "-o", str(obj)],
         f"compiling {name}.c with {Path(compiler).name} {opt}")
    _run([compiler, "-std=c99", "-Wall", "-Wextra", "-Werror", opt, f"-DMODEL={name}",
          f"-DMODEL_UPPER={name.upper()}", "-I", str(c_dir), str(templates_dir() / "harness" / "host_main.c"),
          str(obj), "-o", str(exe)], f"linking the harness with {Path(compiler).name}")
    return exe


def run_harness(exe, model: QuantizedModel, x_q: np.ndarray, mode: str = "run") -> np.ndarray:
    """Feed x_q [N, T, I] int8; returns [N, T, O] (sequence output or step mode) or [N, O]."""
    x_q = np.ascontiguousarray(x_q, dtype=np.int8)
    n, steps, _ = x_q.shape
    result = _run([str(exe), mode, str(n), str(steps)], "running the compiled model", input=x_q.tobytes())
    per_sequence = steps if (mode == "step" or model.sequence_output) else 1
    y = np.frombuffer(result.stdout, dtype=np.int8)
    expected = n * per_sequence * model.output_size
    if y.size != expected:
        raise ToolchainError(f"the compiled model wrote {y.size} bytes, expected {expected}")
    y = y.reshape(n, per_sequence, model.output_size)
    return y if per_sequence > 1 or mode == "step" or model.sequence_output else y[:, 0]
