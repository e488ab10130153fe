"""C generator: QuantizedModel -> NAME.h and NAME.c (plus the quantized model beside them).

The kernels are real C files (templates/kernels/*.c) included verbatim; the jinja templates
only fill in sizes, data and the call sequence. Output is byte-identical for identical input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import jinja2
import numpy as np

from . import __version__
from .errors import LstmEdgeError, QuantizationError
from .naming import model_prefix
from .quantized_model import QBidirectionalLayer, QGruLayer, QuantizedModel, Requant

KERNELS_COMMON = ("fixedpoint.c", "sigmoid_tanh.c")
KERNEL_LSTM = "lstm_layer.c"
KERNEL_GRU = "gru_layer.c"
KERNEL_DOT = "dot_s8.c"  # row-major int8 dot product of the GRU and dense kernels
KERNEL_DENSE = "fully_connected.c"
KERNEL_TABLE = "lookup_s8.c"


def templates_dir() -> Path:
    """templates/ at the repository root (source checkout) or lstm_edge/templates (installed wheel)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent / "templates"):
        if (candidate / "model.c.j2").is_file():
            return candidate
    raise LstmEdgeError(f"lstm-edge templates not found next to {here}: broken installation")


_ENV = None


def environment() -> jinja2.Environment:
    """The one strict jinja environment: a missing variable is an error, not an empty string."""
    global _ENV
    if _ENV is None:
        _ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())),
                                  undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                  autoescape=False)
    return _ENV


def kernel_source(name: str) -> str:
    return (templates_dir() / "kernels" / name).read_text()


# ---------------------------------------------------------------------------- formatting

def c_array(values: np.ndarray, per_line: int) -> str:
    flat = [str(int(v)) for v in np.asarray(values).reshape(-1)]
    lines = [", ".join(flat[k:k + per_line]) for k in range(0, len(flat), per_line)]
    return ",\n".join("    " + line for line in lines)


def c_requant(r: Requant) -> str:
    return f"{{ .multiplier = {r.multiplier}, .shift = {r.shift} }}"


def c_float(v: float) -> str:
    """A scale for the header, for the user's host-side code (the generated C never uses it):
    9 significant digits round-trip a float32."""
    return f"{float(v):.8e}f"


# ---------------------------------------------------------------------------- context

def _gate_arrays(k: int, layer) -> List[dict]:
    """A GRU layer's four const arrays: its gate matrices (row-major) and folded biases. (An LSTM layer's
    are in the kernel's own layout: _lstm_arrays.)"""
    return [
        dict(ctype="int8_t", name=f"layer{k}_input_weights", length=layer.input_weights.size,
             data=c_array(layer.input_weights, 16)),
        dict(ctype="int8_t", name=f"layer{k}_recurrent_weights", length=layer.recurrent_weights.size,
             data=c_array(layer.recurrent_weights, 16)),
        dict(ctype="int32_t", name=f"layer{k}_input_bias", length=layer.input_bias.size,
             data=c_array(layer.input_bias, 8)),
        dict(ctype="int32_t", name=f"layer{k}_recurrent_bias", length=layer.recurrent_bias.size,
             data=c_array(layer.recurrent_bias, 8)),
    ]


def lstm_unit_blocks(weights: np.ndarray) -> np.ndarray:
    """LSTM gate matrices [4, H, K] int8 -> [H, ceil(K/4), 4, 4] uint8, the layout lstm_layer.c reads: per
    unit, per block of 4 columns, per gate, 4 weights plus 128 (columns padded with weight 0)."""
    gates, units, columns = weights.shape
    padded = np.zeros((gates, units, -(-columns // 4) * 4), dtype=np.int16)
    padded[:, :, :columns] = weights
    return (padded + 128).astype(np.uint8).reshape(gates, units, -1, 4).transpose(1, 2, 0, 3)


def check_lstm_offset_bounds(layer) -> None:
    """lstm_layer.c sums (W + 128) v from B - 128 sum(v): every partial sum must fit in int32."""
    for what, bias, columns in (("input", layer.input_bias, layer.input_size),
                                ("recurrent", layer.recurrent_bias, layer.hidden_size)):
        worst = int(np.abs(bias.astype(np.int64)).max()) + (128 + 255) * 128 * columns
        if worst > np.iinfo(np.int32).max:
            raise QuantizationError(f"LSTM layer '{layer.name}': {columns} {what} columns are too many for the "
                                    f"int32 accumulators of the C kernel (bound {worst})")


def _lstm_arrays(k, layer) -> List[dict]:
    """An LSTM layer's weights in lstm_unit_blocks layout and its biases unit by unit ([H][4])."""
    check_lstm_offset_bounds(layer)
    arrays = [dict(ctype="uint8_t", name=f"layer{k}_{kind}_weights", length=blocks.size, data=c_array(blocks, 16),
                   attribute=" LSTM_WEIGHTS_ALIGNED")
              for kind, blocks in (("input", lstm_unit_blocks(layer.input_weights)),
                                   ("recurrent", lstm_unit_blocks(layer.recurrent_weights)))]
    return arrays + [dict(ctype="int32_t", name=f"layer{k}_{kind}_bias", length=bias.size, data=c_array(bias.T, 8))
                     for kind, bias in (("input", layer.input_bias), ("recurrent", layer.recurrent_bias))]


def _gate_fields(k: int, layer) -> List[str]:
    return [
        f"input_size = {layer.input_size}", f"hidden_size = {layer.hidden_size}",
        f"input_weights = layer{k}_input_weights", f"recurrent_weights = layer{k}_recurrent_weights",
        f"input_bias = layer{k}_input_bias", f"recurrent_bias = layer{k}_recurrent_bias",
        "input_requant = { " + ", ".join(c_requant(r) for r in layer.input_requant) + " }",
        "recurrent_requant = { " + ", ".join(c_requant(r) for r in layer.recurrent_requant) + " }",
    ]


def _state_field(k, kind: str, ctype: str, size: int, default: int, initial):
    """A state array of layer k and what reset() writes into it: a constant, or (for a model with
    an initial state) the matching const array, which is returned to be emitted with the data."""
    field = dict(ctype=ctype, name=f"{kind}_{k}", size=size, reset=default)
    if initial is None:
        return field, []
    array = dict(ctype=ctype, name=f"layer{k}_initial_{kind}", length=size, data=c_array(initial, 16))
    return dict(field, reset=f"{array['name']}[j]"), [array]


def _peephole_arrays(k, layer) -> List[dict]:
    if layer.peephole_weights is None:
        return []
    return [dict(ctype="int16_t", name=f"layer{k}_peephole_weights", length=layer.peephole_weights.size,
                 data=c_array(layer.peephole_weights, 16))]


def _peephole_fields(k, layer) -> List[str]:
    """Peephole weights and multipliers; without peepholes the pointer is 0 (and the
    multipliers, which are then never read, stay zero-initialised)."""
    if layer.peephole_weights is None:
        return ["peephole_weights = 0"]
    return [f"peephole_weights = layer{k}_peephole_weights",
            "peephole_requant = { " + ", ".join(c_requant(r) for r in layer.peephole_requant) + " }"]


def _layer_context(k, layer, source: str) -> dict:
    """Data, designated initialisers, state fields and the step call of recurrent layer k
    (k may carry a direction suffix: "0f", "0b")."""
    q = f"input scale {layer.input_q.scale:.9g} zp {layer.input_q.zero_point}, hidden scale " \
        f"{layer.hidden_q.scale:.9g} zp {layer.hidden_q.zero_point}"
    hidden, initial = _state_field(k, "hidden", "int8_t", layer.hidden_size, layer.hidden_q.zero_point,
                                   layer.initial_hidden)
    if isinstance(layer, QGruLayer):
        variant = "n = tanh(Wx + r (.) (Rh + Rb))" if layer.linear_before_reset else "n = tanh(Wx + R (r (.) h))"
        return dict(
            tag=str(k), hidden_size=layer.hidden_size,
            comment=f"GRU layer {k} '{layer.name}': {layer.input_size} -> {layer.hidden_size} units, {q}.\n"
                    f" * Gates: update, reset, new; {variant}.",
            arrays=_gate_arrays(k, layer) + initial, params_type="gru_layer_params_t",
            fields=_gate_fields(k, layer) + [
                f"hidden_to_q15_requant = {c_requant(layer.hidden_to_q15_requant)}",
                f"q15_to_hidden_requant = {c_requant(layer.q15_to_hidden_requant)}",
                f"hidden_zero_point = {layer.hidden_q.zero_point}",
                f"linear_before_reset = {1 if layer.linear_before_reset else 0}",
                f"gate_clip = {layer.gate_clip}"],
            state=[hidden],
            step=f"gru_layer_step(&layer{k}_params, {source}, s->hidden_{k}, gru_update, gru_reset_hidden, h_next)")
    cell, initial_cell = _state_field(k, "cell", "int16_t", layer.hidden_size, 0, layer.initial_cell)
    return dict(
        tag=str(k), hidden_size=layer.hidden_size,
        comment=f"LSTM layer {k} '{layer.name}': {layer.input_size} -> {layer.hidden_size} units, {q},\n"
                f" * cell scale 2^{layer.cell_scale_power}. Gates: input, forget, cell, output.",
        arrays=_lstm_arrays(k, layer) + initial + initial_cell + _peephole_arrays(k, layer),
        params_type="lstm_layer_params_t",
        fields=_gate_fields(k, layer) + [
            f"forget_cell_requant = {c_requant(layer.forget_cell_requant)}",
            f"input_cell_requant = {c_requant(layer.input_cell_requant)}",
            f"hidden_requant = {c_requant(layer.hidden_requant)}",
            f"hidden_zero_point = {layer.hidden_q.zero_point}",
            f"cell_tanh_shift = {layer.cell_tanh_shift}", f"cell_clip = {layer.cell_clip}",
            f"gate_clip = {layer.gate_clip}", f"input_forget = {1 if layer.input_forget else 0}",
            *_peephole_fields(k, layer)],
        state=[hidden, cell],
        step=f"lstm_layer_step(&layer{k}_params, {source}, s->hidden_{k}, s->cell_{k}, h_next)")


def _dense_context(dense) -> dict:
    return dict(
        name=dense.name, input_size=dense.input_size, output_size=dense.output_size,
        activation=dense.activation.value, weights=c_array(dense.weights, 16), bias=c_array(dense.bias, 8),
        requant=",\n".join("    " + c_requant(r) for r in dense.requant),
        output_scale=f"{dense.output_q.scale:.9g}", output_zero_point=dense.output_q.zero_point,
        activation_min=dense.activation_min, activation_max=dense.activation_max,
        table=c_array(dense.table, 16) if dense.table is not None else "",
        table_scale=f"{dense.table_q.scale:.9g}" if dense.table_q else "",
        table_zero_point=dense.table_q.zero_point if dense.table_q else 0)


def _recurrent_contexts(model: QuantizedModel) -> List[dict]:
    """One context per unidirectional layer; a bidirectional layer k gives "kf" and "kb"."""
    contexts = []
    for k, layer in enumerate(model.recurrent_layers):
        source = "in" if k == 0 else f"s->hidden_{k - 1}"
        if isinstance(layer, QBidirectionalLayer):
            contexts += [_layer_context(f"{k}f", layer.forward, source), _layer_context(f"{k}b", layer.backward, source)]
        else:
            contexts.append(_layer_context(k, layer, source))
    return contexts


def _direction_loop(step_call: str, hidden: str, width: int, dst: str, out_width: int, offset: int,
                    reverse: bool) -> List[str]:
    loop = "for (t = steps - 1; t >= 0; --t) {" if reverse else "for (t = 0; t < steps; ++t) {"
    return [loop, f"    {step_call};", f"    for (j = 0; j < {width}; ++j) {{",
            f"        {dst}[t * {out_width} + {offset} + j] = {hidden}[j];", "    }", "}"]


def window_run_body(model: QuantizedModel, name: str) -> List[str]:
    """C statements of NAME_run for a window model: every layer over the whole window (directions
    in turn), its per-step outputs into one of two window buffers in the state, then the head."""
    lines: List[str] = []
    src, src_width = "in", model.input_size
    buffers = ("s->window_a", "s->window_b")
    for k, layer in enumerate(model.recurrent_layers):
        dst, width = buffers[k % 2], layer.hidden_size
        lines.append(f"/* layer {k}: {src} -> {dst} */")
        directions = [(f"{k}f", layer.forward, 0, False), (f"{k}b", layer.backward, layer.forward.hidden_size, True)] \
            if isinstance(layer, QBidirectionalLayer) else [(k, layer, 0, False)]
        for tag, part, offset, reverse in directions:
            ctx = _layer_context(tag, part, f"{src} + t * {src_width}")
            lines += _direction_loop(ctx["step"], f"s->hidden_{tag}", part.hidden_size, dst, width, offset, reverse)
        src, src_width = dst, width
    last = model.recurrent_layers[-1]
    if model.sequence_output:
        lines += ["for (t = 0; t < steps; ++t) {",
                  f"    {name}_head({src} + t * {src_width}, out + t * {model.output_size});", "}"]
    elif model.last_step_from == "last_index":
        lines.append(f"{name}_head({src} + (steps - 1) * {src_width}, out);")
    elif isinstance(last, QBidirectionalLayer):  # final states: forward after t = T-1, backward after t = 0
        k, half = len(model.recurrent_layers) - 1, last.forward.hidden_size
        lines += [f"for (j = 0; j < {half}; ++j) {{", f"    final_state[j] = s->hidden_{k}f[j];",
                  f"    final_state[{half} + j] = s->hidden_{k}b[j];", "}", f"{name}_head(final_state, out);"]
    else:
        lines.append(f"{name}_head(s->hidden_{len(model.recurrent_layers) - 1}, out);")
    return lines


def head_call_sequence(model: QuantizedModel):
    """C statements of the head, reading `h` and writing `out`, through at most two scratch buffers."""
    calls: List[str] = []
    buffers: List[str] = []
    src = "h"
    for k, dense in enumerate(model.head):
        last = k == len(model.head) - 1
        dst = "out" if last and dense.table is None else ("buffer_a" if k % 2 == 0 else "buffer_b")
        if dst.startswith("buffer") and dst not in buffers:
            buffers.append(dst)
        calls.append(f"fully_connected_s8(&dense{k}_params, {src}, {dst})")
        if dense.table is not None:
            table_dst = "out" if last else dst
            calls.append(f"lookup_s8(dense{k}_table, {dst}, {table_dst}, {dense.output_size})")
            dst = table_dst
        src = dst
    return calls, sorted(buffers)


def layer_label(layer) -> str:
    """LSTM(32), GRU(16), BiLSTM(12+12)."""
    if isinstance(layer, QBidirectionalLayer):
        return f"Bi{layer_label(layer.forward).split('(')[0]}({layer.forward.hidden_size}+{layer.backward.hidden_size})"
    return f"{'GRU' if isinstance(layer, QGruLayer) else 'LSTM'}({layer.hidden_size})"


def summary(model: QuantizedModel) -> str:
    sizes = " -> ".join([str(model.input_size)] + [layer_label(l) for l in model.recurrent_layers]
                        + [f"Dense({d.output_size}{'' if d.activation.value == 'none' else ', ' + d.activation.value})"
                           for d in model.head])
    window = "" if model.streaming else f"; windows of up to {model.max_steps} steps"
    return f"{sizes}; {'output every step' if model.sequence_output else 'output at the last step'}{window}."


def render(model: QuantizedModel) -> Dict[str, str]:
    """{file name: text} of the generated C."""
    name = model_prefix(model.name)
    kernels = list(KERNELS_COMMON)
    grus = [l for l in model.unidirectional_layers if isinstance(l, QGruLayer)]
    if grus or model.head:
        kernels.append(KERNEL_DOT)
    if len(grus) < len(model.unidirectional_layers):
        kernels.append(KERNEL_LSTM)
    if grus:
        kernels.append(KERNEL_GRU)
    if model.head:
        kernels.append(KERNEL_DENSE)
    if any(d.table is not None for d in model.head):
        kernels.append(KERNEL_TABLE)
    calls, buffers = head_call_sequence(model)
    ctx = dict(
        name=name, NAME=name.upper(), guard=f"{name.upper()}_H_", version=__version__,
        source=Path(model.source).name if model.source else "(in memory)", summary=summary(model),
        final_softmax=model.final_softmax or "",
        input_size=model.input_size, output_size=model.output_size,
        sequence_output=1 if model.sequence_output else 0,
        input_scale=c_float(model.input_q.scale), input_zero_point=model.input_q.zero_point,
        output_scale=c_float(model.output_q.scale), output_zero_point=model.output_q.zero_point,
        state_bytes=model.state_bytes, kernels=kernels,
        layers=_recurrent_contexts(model), streaming=model.streaming, max_steps=model.max_steps,
        window_width=max(l.hidden_size for l in model.recurrent_layers),
        window_run=[] if model.streaming else window_run_body(model, name),
        final_width=model.recurrent_layers[-1].hidden_size, last_step_from=model.last_step_from,
        final_bidirectional=isinstance(model.recurrent_layers[-1], QBidirectionalLayer),
        head=[_dense_context(d) for d in model.head], head_calls=calls, head_buffers=buffers,
        max_hidden=max(l.hidden_size for l in model.unidirectional_layers),
        max_gru_hidden=max([l.hidden_size for l in grus], default=0),
        max_width=max([d.output_size for d in model.head], default=1))
    env = environment()
    return {f"{name}.h": env.get_template("model.h.j2").render(ctx),
            f"{name}.c": env.get_template("model.c.j2").render(ctx)}
