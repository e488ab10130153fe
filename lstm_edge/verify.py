"""`verify`: build the generated C, run it, demand integer equality with the simulator, and
measure how far the int8 model is from the float one."""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .hostbuild import build_harness, run_harness
from .ir import FloatModel
from .quantized_model import QuantizedModel
from .reference import forward
from .simulator import simulate


def default_inputs(model: QuantizedModel, sequences: int = 256, steps: int = 24, seed: int = 0) -> np.ndarray:
    """int8 [N, T, I]: uniform random, saturating extremes (all -128 / all 127 / random +-extremes),
    a real zero, and slowly varying sequences like real signals."""
    rng = np.random.default_rng(seed)
    shape = (sequences, steps, model.input_size)
    x = rng.integers(-128, 128, size=shape)
    quarter = sequences // 4
    x[:quarter] = np.where(rng.random((quarter, steps, model.input_size)) < 0.5, -128, 127)
    if sequences >= 4:
        x[quarter] = -128
        x[quarter + 1] = 127
        x[quarter + 2] = model.input_q.zero_point
        smooth = np.cumsum(rng.integers(-6, 7, size=(quarter, steps, model.input_size)), axis=1)
        x[quarter + 3:2 * quarter + 3] = np.clip(smooth + rng.integers(-60, 60, size=(quarter, 1, model.input_size)),
                                                 -128, 127)
    return x.astype(np.int8)


@dataclass
class AccuracyReport:
    max_abs_error: float
    rmse: float
    output_range: float
    argmax_agreement: Optional[float] = None
    float_accuracy: Optional[float] = None
    int8_accuracy: Optional[float] = None


@dataclass
class VerifyReport:
    sequences: int
    steps: int
    builds: List[str] = field(default_factory=list)
    mismatches: List[str] = field(default_factory=list)
    accuracy: Optional[AccuracyReport] = None
    stack_bytes: Dict[str, Tuple[int, Optional[int]]] = field(default_factory=dict)  # target build: run, step
    streaming: bool = True

    @property
    def ok(self) -> bool:
        return not self.mismatches

    @property
    def checked(self) -> str:
        return "run() and step() both checked" if self.streaming else "run() checked; window model, no step()"


def _first_difference(a: np.ndarray, b: np.ndarray) -> str:
    idx = tuple(int(i) for i in np.argwhere(a != b)[0])
    count = int(np.count_nonzero(a != b))
    return f"{count} values differ; first at index {idx}: C {int(a[idx])}, simulator {int(b[idx])}"


def check_c_against_simulator(model: QuantizedModel, c_dir, x_q: np.ndarray, compilers: Sequence[Optional[str]],
                              opts: Sequence[str], report: VerifyReport) -> None:
    """Run `run` and `step` builds for every compiler x optimisation level; record every mismatch."""
    expected = simulate(model, x_q)
    with tempfile.TemporaryDirectory(prefix="lstm-edge-verify.") as work:
        for cc in compilers:
            for opt in opts:
                exe = build_harness(model, c_dir, work, cc=cc, opt=opt)
                label = f"{exe.name.replace('harness.', '')}"
                report.builds.append(label)
                got = run_harness(exe, model, x_q, "run")
                # a window model has no step()
                stepped = run_harness(exe, model, x_q, "step") if model.streaming else None
                _compare(model, label, got, stepped, expected, report)


def _compare(model: QuantizedModel, label: str, got: np.ndarray, stepped: Optional[np.ndarray],
             expected: np.ndarray, report: VerifyReport) -> None:
    """run() must equal the simulator, and step() x T must equal run()."""
    if not np.array_equal(got, expected):
        report.mismatches.append(f"{label} run(): {_first_difference(got, expected)}")
    if stepped is not None:
        streamed = stepped if model.sequence_output else stepped[:, -1]
        if not np.array_equal(streamed, got):
            report.mismatches.append(f"{label} step() x T vs run(): {_first_difference(streamed, got)}")


def check_targets_against_simulator(model: QuantizedModel, c_dir, x_q: np.ndarray, targets: Sequence[str],
                                    opts: Sequence[str], report: VerifyReport) -> None:
    """Cross-compile for every microcontroller target x optimisation level (each target's default level
    when `opts` is empty), run under QEMU, and check as the host builds are checked. Builds run in
    parallel, one per CPU."""
    from .cross import build_firmware, chunk_steps, run_firmware
    from .targets import TARGETS, check_tools
    check_tools(targets)
    expected = simulate(model, x_q)
    jobs = [(TARGETS[name], opt) for name in targets for opt in (opts or [TARGETS[name].default_opt])]

    def one(job):
        target, opt = job
        with tempfile.TemporaryDirectory(prefix=f"lstm-edge-{target.name}.") as work:
            elf = build_firmware(model, c_dir, work, target, opt, chunk_steps(model, target, x_q.shape[1]))
            return run_firmware(elf, target, model, x_q, work)

    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        results = list(pool.map(one, jobs))
    for (target, opt), result in zip(jobs, results):
        label = target.describe(opt)
        report.builds.append(label)
        _compare(model, label, result.run, result.step if model.streaming else None, expected, report)
        report.stack_bytes[label] = (result.stack_run, result.stack_step if model.streaming else None)


def accuracy(model: QuantizedModel, float_model: FloatModel, x_float: np.ndarray, x_q: np.ndarray,
             labels: Optional[np.ndarray] = None) -> AccuracyReport:
    """int8 (dequantized) vs float logits on the same inputs."""
    y_float = forward(float_model, x_float, apply_softmax=False).astype(np.float64)
    y_int8 = model.output_q.dequantize(simulate(model, x_q))
    err = y_int8 - y_float
    rep = AccuracyReport(max_abs_error=float(np.abs(err).max()), rmse=float(np.sqrt(np.mean(err ** 2))),
                         output_range=float(y_float.max() - y_float.min()))
    if model.is_classifier:
        rep.argmax_agreement = float(np.mean(y_float.argmax(-1) == y_int8.argmax(-1)))
        if labels is not None and labels.shape == y_float.shape[:-1]:
            rep.float_accuracy = float(np.mean(y_float.argmax(-1) == labels))
            rep.int8_accuracy = float(np.mean(y_int8.argmax(-1) == labels))
    return rep
