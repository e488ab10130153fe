"""lstm-edge on microcontrollers: executed instructions per time step under QEMU, code size and RAM,
for (I, H) = (16, 32), (40, 64), (64, 128), T = 50, batch 1, one LSTM layer with an output every
step, next to CMSIS-NN's arm_lstm_unidirectional_s8 (the kernel TFLite Micro uses on Arm).

    python benchmarks/mcu_bench.py [--steps 50] [--plugin-src ../shared/tools/qemu-insn-window/insn_window.c]

Instructions: the QEMU TCG plugin ../shared/tools/qemu-insn-window counts the guest instructions
between the harness's two marker functions, around one NAME_run call over the T steps (built here
with the host cc); host instructions come from callgrind inside NAME_run. Divided by T. Counts are
executed instructions, not cycles; they repeat exactly. Code: .text of NAME.c (without weights and
tables) from the footprint measurement for that core and level. RAM: NAME_state_t plus the
worst-case stack of NAME_run (-fstack-usage; it contains the hidden-state scratch). Every run is
also checked bit for bit against the simulator.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench import callgrind_instructions  # noqa: E402
from lstm_edge.bundle import write_bundle  # noqa: E402
from lstm_edge.calibration import calibrate  # noqa: E402
from lstm_edge.cross import build_firmware, run_firmware  # noqa: E402
from lstm_edge.footprint import measure  # noqa: E402
from lstm_edge.hostbuild import build_harness  # noqa: E402
from lstm_edge.quantizer import quantize  # noqa: E402
from lstm_edge.simulator import simulate  # noqa: E402
from lstm_edge.targets import TARGETS, check_tools  # noqa: E402
from model_factory import random_model, signal_like  # noqa: E402

SHAPES = [(16, 32), (40, 64), (64, 128)]
# (column title, target, optimisation level)
COLUMNS = [("Cortex-M4 -O2 (DSP)", "cortex-m4", "-O2"), ("Cortex-M0+ -Os", "cortex-m0plus", "-Os"),
           ("RV32IMC -O2", "rv32imc", "-O2"), ("x86-64 gcc -O2 (callgrind)", "host", "-O2")]
# CMSIS-NN arm_lstm_unidirectional_s8, instructions per step, same toolchains, QEMU 7.2 (issue #4)
REFERENCE = {
    "cortex-m4": {(16, 32): 31_322, (40, 64): 87_970, (64, 128): 258_848},
    "cortex-m0plus": {(16, 32): 89_857, (40, 64): 276_480, (64, 128): 867_888},
    "host": {(16, 32): 53_496, (40, 64): 180_868, (64, 128): 601_200},
}
TARGET_RATIO = {"cortex-m4": 0.85, "cortex-m0plus": 0.85, "host": 1.0}
CMSIS_CODE = {"cortex-m4": 3028, "cortex-m0plus": 2754}  # .text bytes, plus a 512 B table
DEFAULT_PLUGIN = REPO.parent / "shared" / "tools" / "qemu-insn-window" / "insn_window.c"


def build_plugin(src: Path, work: Path) -> Path:
    so = work / "libinsn_window.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
    return so


def marker(elf: Path, nm: str, name: str) -> int:
    out = subprocess.run([nm, str(elf)], capture_output=True, text=True, check=True).stdout
    return int(next(line.split()[0] for line in out.splitlines() if line.endswith(" " + name)), 16)


def qemu_instructions(qmodel, out_dir: Path, work: Path, target_name: str, opt: str, x_q: np.ndarray,
                      plugin: Path) -> int:
    """Instructions of one NAME_run call over x_q's steps (one sequence), checked against the simulator."""
    target = TARGETS[target_name]
    elf = build_firmware(qmodel, out_dir, work, target, opt, chunk=x_q.shape[1])
    start, stop = (marker(elf, target.tool("nm"), f"lstm_edge_mark_{m}") for m in ("start", "stop"))
    result = run_firmware(elf, target, qmodel, x_q, work,
                          extra_qemu=["-plugin", f"{plugin},start={start:#x},stop={stop:#x}", "-d", "plugin"])
    if not np.array_equal(result.run, simulate(qmodel, x_q)):
        raise SystemExit(f"{target_name} {opt}: the C differs from the simulator")
    counts = re.findall(r"insn_window 0: (\d+) instructions", result.log)
    if not counts:
        raise SystemExit(f"{target_name}: no instruction window in the QEMU output:\n{result.log}")
    return int(counts[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--plugin-src", type=Path, default=DEFAULT_PLUGIN)
    args = parser.parse_args()
    check_tools(["cortex-m4", "cortex-m0plus", "rv32imc"])
    have_valgrind = shutil.which("valgrind") is not None
    rng = np.random.default_rng(0)
    instr, code, ram = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="lstm-edge-mcu-bench.") as tmp:
        work = Path(tmp)
        plugin = build_plugin(args.plugin_src, work)
        for i, h in SHAPES:
            model = random_model(i, [h], [], sequence_output=True, seed=i + h)
            qmodel = quantize(model, calibrate(model, signal_like(rng, 256, args.steps, i)), name="bench")
            out = write_bundle(qmodel, work / f"out{i}_{h}", model)
            x_q = qmodel.input_q.quantize(signal_like(rng, 1, args.steps, i))
            for _, target, opt in COLUMNS:
                key = (target, i, h)
                if target == "host":
                    if have_valgrind:
                        exe = build_harness(qmodel, out, work / f"host{i}_{h}", cc="gcc", opt=opt)
                        instr[key] = callgrind_instructions(exe, "bench", x_q) / args.steps
                    continue
                instr[key] = qemu_instructions(qmodel, out, work / f"{target}{i}_{h}", target, opt, x_q,
                                               plugin) / args.steps
                fp = measure(qmodel, target, opt)
                code[key] = fp.flash["code"]
                ram[key] = (fp.state_bytes, fp.stack_by_function["bench_run"])

    print(f"lstm-edge on microcontrollers: 1 LSTM layer, output every step, T = {args.steps}, batch 1")
    print("instructions per time step (ratio to CMSIS-NN arm_lstm_unidirectional_s8; target ratio in brackets)")
    print("| (I,H) | " + " | ".join(title for title, _, _ in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for i, h in SHAPES:
        cells = []
        for _, target, _ in COLUMNS:
            v = instr.get((target, i, h))
            if v is None:
                cells.append("n/a")
                continue
            ref = REFERENCE.get(target, {}).get((i, h))
            cells.append(f"{v:,.0f}" + (f" / {ref:,} = {v / ref:.2f}x (<= {TARGET_RATIO[target]:.2f})" if ref else ""))
        print(f"| {i},{h} | " + " | ".join(cells) + " |")
    print()
    print("code (.text of the model, without weights and tables) and RAM (state + worst-case stack of run)")
    print("| (I,H) | " + " | ".join(f"{title}: code, RAM (4H)" for title, t, _ in COLUMNS if t != "host") + " |")
    print("|---" * len(COLUMNS) + "|")
    for i, h in SHAPES:
        cells = []
        for _, target, _ in COLUMNS:
            if target == "host":
                continue
            state, stack = ram[(target, i, h)]
            cmsis = f" (CMSIS-NN {CMSIS_CODE[target]:,} B + 512 B table)" if target in CMSIS_CODE else ""
            cells.append(f"{code[(target, i, h)]:,} B{cmsis}, {state:,} + {stack:,} = {state + stack:,} B "
                         f"(4H + {state + stack - 4 * h:,})")
        print(f"| {i},{h} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
