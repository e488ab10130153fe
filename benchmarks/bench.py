"""lstm-edge benchmark: compile time, simulator throughput and host instructions per step of the
generated C, for (I, H) = (16, 32), (40, 64), (64, 128).

    python benchmarks/bench.py [--steps 50] [--cc gcc]

Instruction counts come from valgrind's callgrind (exact and repeatable for a given binary),
counted inside NAME_run only, divided by the number of steps. Times are medians of repeats.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from lstm_edge.bundle import write_bundle  # noqa: E402
from lstm_edge.calibration import calibrate  # noqa: E402
from lstm_edge.hostbuild import build_harness  # noqa: E402
from lstm_edge.quantizer import quantize  # noqa: E402
from lstm_edge.simulator import reset, run  # noqa: E402
from model_factory import random_model, signal_like  # noqa: E402

SHAPES = [(16, 32), (40, 64), (64, 128)]
# CMSIS-NN arm_lstm_unidirectional_s8, x86-64 gcc -O2 under callgrind, instructions per step (issue #4).
CMSIS_NN_HOST = {(16, 32): 53_496, (40, 64): 180_868, (64, 128): 601_200}


def median_time(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def callgrind_instructions(exe: Path, name: str, x_q: np.ndarray) -> int:
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "cg.out"
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        f"--toggle-collect={name}_run", str(exe), "run", str(x_q.shape[0]), str(x_q.shape[1])],
                       input=x_q.tobytes(), capture_output=True, check=True)
        for line in out.read_text().splitlines():
            if line.startswith("totals:") or line.startswith("summary:"):
                return int(line.split()[1])
    raise RuntimeError("no totals in callgrind output")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cc", default="gcc")
    args = parser.parse_args()
    have_valgrind = shutil.which("valgrind") is not None
    rng = np.random.default_rng(0)
    rows = []
    for i, h in SHAPES:
        model = random_model(i, [h], [], sequence_output=True, seed=i + h)
        calib = signal_like(rng, 256, args.steps, i)
        with tempfile.TemporaryDirectory() as work:
            def compile_once():
                q = quantize(model, calibrate(model, calib), name="bench")
                write_bundle(q, Path(work) / "out", model)
                return q
            compile_s = median_time(compile_once, repeats=3)
            qmodel = compile_once()
            x_q = qmodel.input_q.quantize(signal_like(rng, 256, args.steps, i))
            sim = {}
            for batch in (1, 256):
                xb = x_q[:batch]
                t = median_time(lambda: run(qmodel, reset(qmodel, batch), xb), repeats=3)
                sim[batch] = batch * args.steps / t
            per_step = None
            if have_valgrind:
                exe = build_harness(qmodel, Path(work) / "out", Path(work) / "build", cc=args.cc, opt="-O2")
                per_step = callgrind_instructions(exe, "bench", x_q[:4]) / (4 * args.steps)
        rows.append((i, h, compile_s, sim[1], sim[256], per_step))

    print(f"lstm-edge benchmark: 1 LSTM layer, T = {args.steps}, host {args.cc} -O2")
    print("| (I,H) | compile s (256 calib seqs) | sim seq*steps/s batch 1 | batch 256 | "
          "host instr/step | CMSIS-NN instr/step | ratio |")
    print("|---|---|---|---|---|---|---|")
    for i, h, compile_s, s1, s256, per_step in rows:
        ref = CMSIS_NN_HOST[(i, h)]
        instr = f"{per_step:,.0f}" if per_step else "n/a (no valgrind)"
        ratio = f"{per_step / ref:.2f}" if per_step else "n/a"
        print(f"| {i},{h} | {compile_s:.2f} | {s1:,.0f} | {s256:,.0f} | {instr} | {ref:,} | {ratio} |")


if __name__ == "__main__":
    main()
