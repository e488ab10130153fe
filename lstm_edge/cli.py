"""The `lstm-edge` command: a thin click layer over the library API.

Every LstmEdgeError becomes one line on stderr and its exit code (2 for bad input, 1 for a
failed verification); nothing half-written is left behind.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click
import numpy as np

from . import __version__
from .errors import InputDataError, LstmEdgeError
from .targets import TARGETS

ARCH_HELP = ("Architecture of a PyTorch state_dict (.pt/.pth): a one-line description such as "
             "'lstm(input=12, hidden=32) -> last -> linear(32, 3)', or a .yaml/.json file (docs/pytorch-arch.md).")
FOOTPRINT_TARGETS = tuple(TARGETS)
DATA_HELP = ("float32 array [N, T, F] batch-first (sequences, steps, features) in .npy (memory-mapped, "
             "any size) or .npz (key 'x', or its only array)")


class Progress:
    """A one-line progress indicator on stderr that appears only when the work takes over a second."""

    def __init__(self, label: str, delay: float = 1.0):
        self.label, self.delay, self.start, self.shown = label, delay, time.monotonic(), False

    def __call__(self, done: int, total: int) -> None:
        if time.monotonic() - self.start < self.delay or not sys.stderr.isatty():
            return
        self.shown = True
        width = 30
        filled = int(width * done / max(total, 1))
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


class LstmEdgeCommand(click.Group):
    """Maps domain errors to one line and an exit code instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LstmEdgeError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except (KeyboardInterrupt, click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # a bug in lstm-edge, not the user's fault: say so, still one line
            if os.environ.get("LSTM_EDGE_DEBUG"):
                raise
            click.echo(f"internal error: {type(exc).__name__}: {exc} (set LSTM_EDGE_DEBUG=1 for a traceback "
                       "and please report it)", err=True)
            ctx.exit(3)


@click.group(cls=LstmEdgeCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lstm-edge")
def main():
    """Compile trained LSTM models to integer-only C for microcontrollers, with a bit-exact simulator.

    \b
    lstm-edge inspect model.onnx
    lstm-edge compile model.onnx --calib calib.npy -o build/kws --name kws
    lstm-edge simulate build/kws --input test.npy --output pred.npz
    lstm-edge verify build/kws --input test.npy
    """


# ----------------------------------------------------------------------------------- inspect

@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--output", "output_name", help="Graph output to compile when the model has several.")
@click.option("--arch", help=ARCH_HELP)
def inspect(model, output_name, arch):
    """Show layers, shapes, parameter count and memory of MODEL (a model file or a compile folder)."""
    from .report import describe_compiled, describe_float
    if model.is_dir():
        click.echo(describe_compiled(model))
    else:
        from .importers import load_model
        click.echo(describe_float(load_model(model, output=output_name, arch=arch)))


# ----------------------------------------------------------------------------------- compile

def _footprint(qmodel, target: str, opt: str):
    """NAME.footprint.txt/.json for the output folder, and the line compile prints."""
    from .footprint import footprint_files, measure, summary_line
    fp = measure(qmodel, target, opt)
    return footprint_files(fp), summary_line(fp) + ("" if fp.measured else f" ({fp.unmeasured_reason})")


def _compile_prequantized(qmodel, model: Path, calib, out_dir: Path, emit_tflite: bool, tflite_steps,
                          footprint_target: str, footprint_opt: str):
    """A full-integer .tflite: its own scales and zero points, bit-exact with TFLite Micro."""
    from .bundle import write_bundle
    from .codegen import summary
    if calib is not None:
        raise InputDataError(f"{model.name} is a full-integer (int8) model, compiled with its own quantization "
                             "(bit-exact with TFLite Micro): drop --calib")
    extra = {}
    if emit_tflite:  # the model itself is the TFLite Micro model of this C: copied as it is
        from .importers.tflite_importer import inspect_tflite
        steps = inspect_tflite(model).steps
        if tflite_steps and tflite_steps != steps:
            raise InputDataError(f"--tflite-steps {tflite_steps}: {model.name} is copied as it is, with its "
                                 f"{steps} steps")
        tflite_steps = steps
        extra[f"{qmodel.name}.tflite"] = model.read_bytes()
    footprint_extra, footprint_line = _footprint(qmodel, footprint_target, footprint_opt)
    write_bundle(qmodel, out_dir, None, extra_files={**extra, **footprint_extra})
    click.echo(f"compiled {model.name}: {summary(qmodel)}")
    click.echo(f"quantization from the model (full-integer TFLite, no calibration); weights {qmodel.weight_bytes} B, "
               f"state {qmodel.state_bytes} B per instance")
    click.echo(footprint_line)
    click.echo(f"wrote {out_dir}/{qmodel.name}.h, {qmodel.name}.c"
               + (f", {qmodel.name}.tflite ({tflite_steps} steps)" if emit_tflite else ""))


@main.command("compile")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--calib", "calib", type=click.Path(path_type=Path),
              help=f"Calibration inputs: {DATA_HELP}. Use a few hundred representative sequences. Required "
                   "except for a full-integer .tflite, which is compiled with its own quantization.")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output folder for NAME.h, NAME.c, NAME.qmodel.json, NAME.float.npz (replaced whole).")
@click.option("--name", help="C prefix of every exported symbol (default: the output folder's name).")
@click.option("--calib-method", type=click.Choice(["minmax", "percentile"]), default="minmax", show_default=True,
              help="How tensor ranges are taken from the calibration data.")
@click.option("--percentile", type=float, default=99.99, show_default=True,
              help="With --calib-method percentile: keep this percentile of each tensor's values.")
@click.option("--output", "output_name", help="Graph output to compile when the model has several.")
@click.option("--emit-tflite", is_flag=True,
              help="Also write NAME.tflite: the same integer model for TensorFlow Lite Micro (int8 input [1, T, F]).")
@click.option("--tflite-steps", type=click.IntRange(1, 1 << 16),
              help="With --emit-tflite: the steps T of the .tflite input (default: the calibration sequences' length).")
@click.option("--arch", help=ARCH_HELP)
@click.option("--max-steps", type=click.IntRange(1, 1 << 16),
              help="Window length (steps) of a model with bidirectional layers; its C buffers are sized for it.")
@click.option("--footprint-target", type=click.Choice(FOOTPRINT_TARGETS), default="cortex-m4", show_default=True,
              help="Core whose cross toolchain measures code size and stack for NAME.footprint.txt/.json.")
@click.option("--footprint-opt", default="-O2", show_default=True, help="Optimisation level of that measurement.")
def compile_cmd(model, calib, out_dir, name, calib_method, percentile, output_name, emit_tflite, tflite_steps,
                arch, max_steps, footprint_target, footprint_opt):
    """Quantize MODEL with calibration data and write portable C (NAME.h, NAME.c) into OUT."""
    from .api import calibrate_model, load_model, quantize
    from .bundle import write_bundle
    from .codegen import summary
    from .naming import default_prefix, model_prefix
    if tflite_steps and not emit_tflite:
        raise InputDataError("--tflite-steps sets the .tflite file's input length: add --emit-tflite")
    prefix = model_prefix(name) if name else default_prefix(out_dir.resolve().name)
    from .importers import load_prequantized
    prequantized = load_prequantized(model, prefix, output=output_name)
    if prequantized is not None:
        return _compile_prequantized(prequantized, model, calib, out_dir, emit_tflite, tflite_steps,
                                     footprint_target, footprint_opt)
    if calib is None:
        raise InputDataError(f"--calib is required to quantize {model.name}: only a full-integer (int8) "
                             ".tflite model carries its own quantization")
    float_model = load_model(model, output=output_name, arch=arch)
    progress = Progress("calibrating")
    try:
        ranges = calibrate_model(float_model, calib, method=calib_method, percentile=percentile, progress=progress)
    finally:
        progress.close()
    qmodel = quantize(float_model, ranges, name=prefix, max_steps=max_steps or 0)
    extra = {}
    if emit_tflite:  # exported before anything is written: a refusal leaves no folder behind
        from .calibration import load_sequences
        from .tflite import export_tflite
        tflite_steps = tflite_steps or int(load_sequences(calib, float_model.input_size).shape[1])
        extra[f"{prefix}.tflite"] = export_tflite(qmodel, tflite_steps)
    footprint_extra, footprint_line = _footprint(qmodel, footprint_target, footprint_opt)
    write_bundle(qmodel, out_dir, float_model, extra_files={**extra, **footprint_extra})
    for note in float_model.notes:
        click.echo(f"note: {note}")
    click.echo(f"compiled {model.name}: {summary(qmodel)}")
    click.echo(f"calibrated on {ranges.sequences} sequences ({ranges.method}); "
               f"weights {qmodel.weight_bytes} B, state {qmodel.state_bytes} B per instance")
    click.echo(footprint_line)
    click.echo(f"wrote {out_dir}/{prefix}.h, {prefix}.c"
               + (f", {prefix}.tflite ({tflite_steps} steps)" if emit_tflite else ""))


# ----------------------------------------------------------------------------------- simulate

def _load_float_input(path: Path, input_size: int):
    from .calibration import load_sequences
    data = load_sequences(path, input_size, what="input")
    labels = None
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "y" in z.files:
                labels = np.asarray(z["y"]).astype(np.int64)
    return np.asarray(data, dtype=np.float32), labels


@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path), help=f"Inputs: {DATA_HELP}.")
@click.option("--output", "output_path", required=True, type=click.Path(path_type=Path),
              help="Write an .npz with x_q (int8 input), y_q (int8 output), y (dequantized output).")
@click.option("--trace", is_flag=True, help="Also store every step's integer gate values (pre, gates, cell, hidden).")
def simulate(out_dir, input_path, output_path, trace):
    """Run the compiled model in OUT_DIR bit-exactly in Python on float inputs."""
    from .bundle import load_bundle_quantized
    from .simulator import simulate as run_sim
    qmodel = load_bundle_quantized(out_dir)
    x, _ = _load_float_input(input_path, qmodel.input_size)
    x_q = qmodel.input_q.quantize(x)
    arrays = {"x_q": x_q}
    if trace:
        y_q, traces = run_sim(qmodel, x_q, trace=True)
        for k, layer_trace in enumerate(traces):
            for field in ("preactivation", "gates", "cell", "hidden"):
                arrays[f"trace_layer{k}_{field}"] = np.stack([getattr(s, field) for s in layer_trace])
    else:
        y_q = run_sim(qmodel, x_q)
    arrays["y_q"] = y_q
    arrays["y"] = qmodel.output_q.dequantize(y_q).astype(np.float32)
    if output_path.suffix != ".npz":
        raise InputDataError(f"--output {output_path}: use a .npz file name")
    np.savez(output_path, **arrays)
    click.echo(f"simulated {x_q.shape[0]} sequences x {x_q.shape[1]} steps -> {output_path} "
               f"(y_q {tuple(y_q.shape)})")


# ----------------------------------------------------------------------------------- verify

@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--input", "input_path", type=click.Path(path_type=Path),
              help=f"Inputs: {DATA_HELP}; an .npz may carry labels 'y'. Default: random and saturating sequences.")
@click.option("--cc", "compilers", multiple=True, help="C compiler(s) to build with (default: $CC or cc). Repeatable.")
@click.option("--opt", "opts", multiple=True, help="Optimisation level(s), e.g. -O0 -O2 (default: -O2). Repeatable.")
@click.option("--sequences", default=256, show_default=True, help="Number of generated sequences without --input.")
@click.option("--steps", default=24, show_default=True, help="Steps per generated sequence without --input.")
@click.option("--target", "target_names", multiple=True, metavar="T",
              help="Where to run the C: host (default), cortex-m0plus, cortex-m3, cortex-m4, cortex-m7, cortex-m33, "
                   "rv32imc (cross-compiled, run under QEMU), or all. Repeatable.")
def verify(out_dir, input_path, compilers, opts, sequences, steps, target_names):
    """Build the C in OUT_DIR, run it, and compare with the simulator.

    On the host by default; with --target, also cross-compiled for microcontrollers and run under
    QEMU (their default optimisation level is -O2, -Os for cortex-m0plus, unless --opt is given).
    Exits 1 on any difference. Also prints the int8-vs-float error (max abs, RMSE, and argmax
    agreement for classifiers).
    """
    from .bundle import load_bundle_float, load_bundle_quantized
    from .errors import VerificationMismatch
    from .targets import HOST, check_tools, resolve_targets
    from .verify import (VerifyReport, accuracy, check_c_against_simulator, check_targets_against_simulator,
                         default_inputs)
    targets = resolve_targets(target_names or [HOST])
    check_tools(targets)
    qmodel = load_bundle_quantized(out_dir)
    labels = None
    if input_path:
        x_float, labels = _load_float_input(input_path, qmodel.input_size)
        x_q = qmodel.input_q.quantize(x_float)
    else:
        x_q = default_inputs(qmodel, sequences, min(steps, qmodel.max_steps) if qmodel.max_steps else steps)
        x_float = qmodel.input_q.dequantize(x_q).astype(np.float32)
    report = VerifyReport(sequences=x_q.shape[0], steps=x_q.shape[1], streaming=qmodel.streaming)
    if HOST in targets:
        check_c_against_simulator(qmodel, out_dir, x_q, compilers or [None], opts or ["-O2"], report)
    cross = [t for t in targets if t != HOST]
    if cross:
        check_targets_against_simulator(qmodel, out_dir, x_q, cross, opts, report)
    float_model = load_bundle_float(out_dir)
    if float_model is not None:
        report.accuracy = accuracy(qmodel, float_model, x_float, x_q, labels)
    from .report import format_verify_report
    click.echo(format_verify_report(report))
    if not report.ok:
        raise VerificationMismatch(f"the C differs from the simulator in {len(report.mismatches)} check(s)")


if __name__ == "__main__":  # pragma: no cover
    main()
