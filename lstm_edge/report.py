"""Human-readable reports: `inspect` of a float model or a compiled folder, and `verify` results."""

from __future__ import annotations

from pathlib import Path

from .bundle import load_bundle_quantized
from .codegen import layer_label, summary
from .ir import BidirectionalLayer, FloatModel, GruLayer, layer_arrays


def _directions(layer):
    return (layer.forward, layer.backward) if isinstance(layer, BidirectionalLayer) else (layer,)


def _int8_bytes(model: FloatModel) -> int:
    """Flash for weights and biases once quantized: int8 weights, int32 biases (two per gate row:
    input and recurrent, zero points folded in), one multiplier per dense output."""
    n = sum(d.w_x.size + d.w_h.size + 8 * d.w_x.shape[0] * d.hidden_size
            for l in model.recurrent_layers for d in _directions(l))
    return n + sum(d.w.size + 4 * d.b.size + 8 * d.output_size + (256 if d.activation.value in ("tanh", "sigmoid")
                                                                 else 0) for d in model.head)


def describe_float(model: FloatModel) -> str:
    lines = [f"model {model.name} ({Path(model.source).name if model.source else 'in memory'})",
             f"  input: {model.input_size} features per step, batch-first [N, T, {model.input_size}]"]
    for k, l in enumerate(model.recurrent_layers):
        kind = "GRU" if isinstance(_directions(l)[0], GruLayer) else "LSTM"
        kind = f"bidirectional {kind} ({l.merge})" if isinstance(l, BidirectionalLayer) else kind
        direction = " reverse" if l.reverse else ""
        lines.append(f"  layer {k} {kind}{direction} '{l.name}': {l.input_size} -> {l.hidden_size} "
                     f"({sum(a.size for a in layer_arrays(l))} parameters)")
    for k, d in enumerate(model.head):
        lines.append(f"  dense {k} '{d.name}': {d.input_size} -> {d.output_size}, activation {d.activation.value}"
                     f" ({d.w.size + d.b.size} parameters)")
    if model.final_softmax:
        lines.append(f"  final {model.final_softmax} (compiled model outputs the logits before it)")
    lines.append(f"  output: {model.output_size} values {'every step' if model.sequence_output else 'at the last step'}")
    state = sum((1 if isinstance(d, GruLayer) else 3) * d.hidden_size  # int8 h (+ int16 c for an LSTM)
                for l in model.recurrent_layers for d in _directions(l))
    lines.append(f"  parameters: {model.parameter_count}; int8 weight bytes: {_int8_bytes(model)}; "
                 f"state bytes per instance: {state}")
    lines.extend(f"  note: {n}" for n in model.notes)
    return "\n".join(lines)


def describe_compiled(out_dir) -> str:
    q = load_bundle_quantized(out_dir)
    lines = [f"compiled model {q.name} in {out_dir}: {summary(q)}",
             f"  input scale {q.input_q.scale:.6g} zero point {q.input_q.zero_point}; "
             f"output scale {q.output_q.scale:.6g} zero point {q.output_q.zero_point}"]
    for k, l in enumerate(q.recurrent_layers):
        cell = getattr(getattr(l, "forward", l), "cell_scale_power", None)
        lines.append(f"  layer {k} {layer_label(l)} '{l.name}': {l.input_size} -> {l.hidden_size}, hidden scale "
                     f"{l.hidden_q.scale:.6g} zp {l.hidden_q.zero_point}"
                     + (f", cell scale 2^{cell}" if cell is not None else ""))
    for k, d in enumerate(q.head):
        lines.append(f"  dense {k} '{d.name}': {d.input_size} -> {d.output_size}, {d.activation.value}")
    lines.append(f"  weight bytes {q.weight_bytes}; state bytes per instance {q.state_bytes}")
    from .footprint import format_footprint, load_footprint
    fp = load_footprint(out_dir)
    if fp is not None:
        lines.extend("  " + line for line in format_footprint(fp).splitlines())
    return "\n".join(lines)


def format_verify_report(report) -> str:
    status = "OK" if report.ok else "MISMATCH"
    lines = [f"{status}: C == simulator on {report.sequences} sequences x {report.steps} steps "
             f"(builds: {', '.join(report.builds)}; {report.checked})" if report.ok else
             f"{status}: C != simulator ({report.sequences} sequences x {report.steps} steps)"]
    lines.extend(f"  {m}" for m in report.mismatches)
    for label, (run_bytes, step_bytes) in report.stack_bytes.items():
        lines.append(f"  stack used on {label}: run() {run_bytes} B"
                     + ("" if step_bytes is None else f", step() {step_bytes} B"))
    a = report.accuracy
    if a is not None:
        lines.append(f"int8 vs float: max abs error {a.max_abs_error:.4g}, RMSE {a.rmse:.4g} "
                     f"(float output range {a.output_range:.4g})")
        if a.argmax_agreement is not None:
            lines.append(f"  argmax agreement {100 * a.argmax_agreement:.2f} %")
        if a.float_accuracy is not None:
            lines.append(f"  accuracy on labels: float {100 * a.float_accuracy:.2f} %, "
                         f"int8 {100 * a.int8_accuracy:.2f} %")
    return "\n".join(lines)
