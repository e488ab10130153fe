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
def inspect(model, output_name):
    """Show layers, shapes, parameter count and memory of MODEL (a model file or a compile folder)."""
    from .report import describe_compiled, describe_float
    if model.is_dir():
        click.echo(describe_compiled(model))
    else:
        from .importers import load_model
        click.echo(describe_float(load_model(model, output=output_name)))


# ----------------------------------------------------------------------------------- compile

@main.command("compile")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--calib", "calib", required=True, type=click.Path(path_type=Path),
              help=f"Calibration inputs: {DATA_HELP}. Use a few hundred representative sequences.")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output folder for NAME.h, NAME.c, NAME.qmodel.json, NAME.float.npz (replaced whole).")
@click.option("--name", help="C prefix of every exported symbol (default: the output folder's name).")
@click.option("--calib-method", type=click.Choice(["minmax", "percentile"]), default="minmax", show_default=True,
              help="How tensor ranges are taken from the calibration data.")
@click.option("--percentile", type=float, default=99.99, show_default=True,
              help="With --calib-method percentile: keep this percentile of each tensor's values.")
@click.option("--output", "output_name", help="Graph output to compile when the model has several.")
def compile_cmd(model, calib, out_dir, name, calib_method, percentile, output_name):
    """Quantize MODEL with calibration data and write portable C (NAME.h, NAME.c) into OUT."""
    from .api import calibrate_model, load_model, quantize, write_c
    from .codegen import summary
    from .naming import default_prefix, model_prefix
    prefix = model_prefix(name) if name else default_prefix(out_dir.resolve().name)
    float_model = load_model(model, output=output_name)
    progress = Progress("calibrating")
    try:
        ranges = calibrate_model(float_model, calib, method=calib_method, percentile=percentile, progress=progress)
    finally:
        progress.close()
    qmodel = quantize(float_model, ranges, name=prefix)
    write_c(qmodel, out_dir, float_model=float_model)
    for note in float_model.notes:
        click.echo(f"note: {note}")
    click.echo(f"compiled {model.name}: {summary(qmodel)}")
    click.echo(f"calibrated on {ranges.sequences} sequences ({ranges.method}); "
               f"weights {qmodel.weight_bytes} B, state {qmodel.state_bytes} B per instance")
    click.echo(f"wrote {out_dir}/{prefix}.h, {prefix}.c")


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
def verify(out_dir, input_path, compilers, opts, sequences, steps):
    """Build the C in OUT_DIR with the host compiler, run it, and compare with the simulator.

    Exits 1 on any difference. Also prints the int8-vs-float error (max abs, RMSE, and argmax
    agreement for classifiers).
    """
    from .bundle import load_bundle_float, load_bundle_quantized
    from .errors import VerificationMismatch
    from .verify import VerifyReport, accuracy, check_c_against_simulator, default_inputs
    qmodel = load_bundle_quantized(out_dir)
    labels = None
    if input_path:
        x_float, labels = _load_float_input(input_path, qmodel.input_size)
        x_q = qmodel.input_q.quantize(x_float)
    else:
        x_q = default_inputs(qmodel, sequences, steps)
        x_float = qmodel.input_q.dequantize(x_q).astype(np.float32)
    report = VerifyReport(sequences=x_q.shape[0], steps=x_q.shape[1])
    check_c_against_simulator(qmodel, out_dir, x_q, compilers or [None], opts or ["-O2"], report)
    float_model = load_bundle_float(out_dir)
    if float_model is not None:
        report.accuracy = accuracy(qmodel, float_model, x_float, x_q, labels)
    from .report import format_verify_report
    click.echo(format_verify_report(report))
    if not report.ok:
        raise VerificationMismatch(f"the C differs from the simulator in {len(report.mismatches)} check(s)")


if __name__ == "__main__":  # pragma: no cover
    main()
