"""Bit-exact simulator of the generated C, vectorized over a batch of sequences.

Function for function the twin of templates/kernels/*.c: lstm_gate_preactivation,
lstm_cell_update, lstm_hidden_output, lstm_layer_step, fully_connected_s8, lookup_s8. Only
integer arithmetic on the quantized path (int64 numpy arrays holding int8/int16/int32 values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from .errors import InputDataError
from .fixedpoint import (clip_gate, multiply_by_quantized_multiplier, saturate_int16, saturate_int8, sigmoid_q15,
                         tanh_q15)
from .quantized_model import QBidirectionalLayer, QDenseLayer, QGruLayer, QLstmLayer, QuantizedModel

GATE_INPUT, GATE_FORGET, GATE_CELL, GATE_OUTPUT = range(4)


def _requant_arrays(requants):
    return (np.array([r.multiplier for r in requants], dtype=np.int64),
            np.array([r.shift for r in requants], dtype=np.int64))


def lstm_gate_preactivation(layer: QLstmLayer, x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """All four gates at once: [4, N, H] int16 Q3.12 values.

    pre = sat16( sat16(RQ(Bx + Wx x, Mx)) + sat16(RQ(Bh + Wh h, Mh)) ), each term saturated on its own,
    as TFLite Micro does (CMSIS-NN leaves the recurrent term unclamped: it differs past +-8.0).
    """
    ax = np.einsum("ghk,nk->gnh", layer.input_weights.astype(np.int64), x) + layer.input_bias[:, None, :]
    ah = np.einsum("ghk,nk->gnh", layer.recurrent_weights.astype(np.int64), h) + layer.recurrent_bias[:, None, :]
    mx, sx = _requant_arrays(layer.input_requant)
    mh, sh = _requant_arrays(layer.recurrent_requant)
    from_input = saturate_int16(multiply_by_quantized_multiplier(ax, mx[:, None, None], sx[:, None, None]))
    from_hidden = saturate_int16(multiply_by_quantized_multiplier(ah, mh[:, None, None], sh[:, None, None]))
    return saturate_int16(from_input + from_hidden)


def lstm_peephole(layer: QLstmLayer, gate: int, pre, cell):
    """pre + p (.) c: sat16(pre + sat16(RQ(P[gate] * c, s_P s_c / 2^-12))), a Q3.12 term."""
    r = layer.peephole_requant[gate]
    term = saturate_int16(multiply_by_quantized_multiplier(layer.peephole_weights[gate].astype(np.int64) * cell,
                                                           r.multiplier, r.shift))
    return saturate_int16(pre + term)


def lstm_cell_update(layer: QLstmLayer, cell, forget, input_gate, candidate):
    """c = clip( sat16( sat16(RQ(f * c_prev)) + sat16(RQ(i * g)) ) )"""
    fc, ic = layer.forget_cell_requant, layer.input_cell_requant
    kept = saturate_int16(multiply_by_quantized_multiplier(forget * cell, fc.multiplier, fc.shift))
    added = saturate_int16(multiply_by_quantized_multiplier(input_gate * candidate, ic.multiplier, ic.shift))
    updated = saturate_int16(kept + added)
    if layer.cell_clip > 0:
        updated = np.clip(updated, -layer.cell_clip, layer.cell_clip)
    return updated


def lstm_hidden_output(layer: QLstmLayer, output_gate, cell):
    """h = sat8( RQ(o * tanh(c)) + zp_h )"""
    hr = layer.hidden_requant
    product = output_gate * tanh_q15(cell, layer.cell_tanh_shift)
    return saturate_int8(multiply_by_quantized_multiplier(product, hr.multiplier, hr.shift)
                         + layer.hidden_q.zero_point)


@dataclass
class GateTrace:
    """Per-step integer values of one layer: pre-activations [4, N, H] and gate outputs [4, N, H]."""

    preactivation: np.ndarray
    gates: np.ndarray
    cell: np.ndarray
    hidden: np.ndarray


def lstm_layer_step(layer: QLstmLayer, x, h, c, trace: Optional[list] = None):
    """One step for the whole batch: returns (h_new, c_new); h, c are not modified."""
    pre = lstm_gate_preactivation(layer, x, h)
    peepholes = layer.peephole_weights is not None
    if peepholes:  # i and f see c_prev; o sees the new c, below
        pre[GATE_INPUT] = lstm_peephole(layer, 0, pre[GATE_INPUT], c)
        pre[GATE_FORGET] = lstm_peephole(layer, 1, pre[GATE_FORGET], c)
    pre[:GATE_OUTPUT] = clip_gate(layer.gate_clip, pre[:GATE_OUTPUT])
    i_gate = sigmoid_q15(pre[GATE_INPUT])
    # input_forget: f = 1 - i in Q0.15
    f_gate = saturate_int16(32768 - i_gate) if layer.input_forget else sigmoid_q15(pre[GATE_FORGET])
    g_gate = tanh_q15(pre[GATE_CELL], 0)
    c_new = lstm_cell_update(layer, c, f_gate, i_gate, g_gate)
    if peepholes:
        pre[GATE_OUTPUT] = lstm_peephole(layer, 2, pre[GATE_OUTPUT], c_new)
    pre[GATE_OUTPUT] = clip_gate(layer.gate_clip, pre[GATE_OUTPUT])
    o_gate = sigmoid_q15(pre[GATE_OUTPUT])
    h_new = lstm_hidden_output(layer, o_gate, c_new)
    if trace is not None:
        trace.append(GateTrace(pre, np.stack([i_gate, f_gate, g_gate, o_gate]), c_new, h_new))
    return h_new, c_new


# ------------------------------------------------------------------------- GRU (twin of gru_layer.c)

def gru_gate_term(weights, bias, requant, v):
    """sat16(RQ(bias + W v)) for all gates: [G, N, H] in Q3.12."""
    acc = np.einsum("ghk,nk->gnh", weights.astype(np.int64), v) + bias[:, None, :]
    m, s = _requant_arrays(requant)
    return saturate_int16(multiply_by_quantized_multiplier(acc, m[:, None, None], s[:, None, None]))


def gru_reset_hidden(layer: QGruLayer, reset_gate, h):
    """r (.) h_prev, kept in h's int8 quantization: sat8(RQ(r * (h - zp_h), 2^-15) + zp_h)."""
    zp = layer.hidden_q.zero_point
    return saturate_int8(multiply_by_quantized_multiplier(reset_gate * (h - zp), 1 << 30, -14) + zp)


def gru_hidden_update(layer: QGruLayer, update_gate, candidate, h):
    """h = (1 - z) n + z h_prev = n + z (h_prev - n), in Q0.15, then back to int8."""
    zp = layer.hidden_q.zero_point
    hq, back = layer.hidden_to_q15_requant, layer.q15_to_hidden_requant
    h_prev = saturate_int16(multiply_by_quantized_multiplier(h - zp, hq.multiplier, hq.shift))
    h_new = saturate_int16(candidate + multiply_by_quantized_multiplier(update_gate * (h_prev - candidate),
                                                                        1 << 30, -14))
    return saturate_int8(multiply_by_quantized_multiplier(h_new, back.multiplier, back.shift) + zp)


def gru_layer_step(layer: QGruLayer, x, h, trace: Optional[list] = None):
    """One GRU step for the whole batch: returns the new int8 h."""
    from_input = gru_gate_term(layer.input_weights, layer.input_bias, layer.input_requant, x)
    from_hidden = gru_gate_term(layer.recurrent_weights[:2], layer.recurrent_bias[:2],
                                layer.recurrent_requant[:2], h)
    z_pre = clip_gate(layer.gate_clip, saturate_int16(from_input[0] + from_hidden[0]))
    r_pre = clip_gate(layer.gate_clip, saturate_int16(from_input[1] + from_hidden[1]))
    z_gate, r_gate = sigmoid_q15(z_pre), sigmoid_q15(r_pre)
    if layer.linear_before_reset:  # n = tanh(Wn x + r (.) (Rn h + Rbn))
        nh = gru_gate_term(layer.recurrent_weights[2:], layer.recurrent_bias[2:], layer.recurrent_requant[2:], h)[0]
        reset_term = saturate_int16(multiply_by_quantized_multiplier(r_gate * nh, 1 << 30, -14))
    else:  # n = tanh(Wn x + Rn (r (.) h))
        rh = gru_reset_hidden(layer, r_gate, h)
        reset_term = gru_gate_term(layer.recurrent_weights[2:], layer.recurrent_bias[2:],
                                   layer.recurrent_requant[2:], rh)[0]
    n_pre = clip_gate(layer.gate_clip, saturate_int16(from_input[2] + reset_term))
    n_gate = tanh_q15(n_pre, 0)
    h_new = gru_hidden_update(layer, z_gate, n_gate, h)
    if trace is not None:  # the pre-activations the activations read, as for the LSTM
        trace.append(GateTrace(np.stack([z_pre, r_pre, n_pre]), np.stack([z_gate, r_gate, n_gate]), h_new, h_new))
    return h_new


def fully_connected_s8(dense: QDenseLayer, x: np.ndarray) -> np.ndarray:
    """y = clamp( RQ(B + W x, M[n]) + zp_y, act_min, act_max ), per output channel."""
    acc = x.astype(np.int64) @ dense.weights.astype(np.int64).T + dense.bias
    m, s = _requant_arrays(dense.requant)
    y = multiply_by_quantized_multiplier(acc, m, s) + dense.output_q.zero_point
    return np.clip(y, dense.activation_min, dense.activation_max)


def lookup_s8(table: np.ndarray, x: np.ndarray) -> np.ndarray:
    return table.astype(np.int64)[x + 128]


def head_forward(model: QuantizedModel, h: np.ndarray) -> np.ndarray:
    for dense in model.head:
        h = fully_connected_s8(dense, h)
        if dense.table is not None:
            h = lookup_s8(dense.table, h)
    return h


@dataclass
class SimState:
    """Mirror of NAME_state_t for a batch: per layer int8 h [N, H] and int16 c [N, H]."""

    hidden: List[np.ndarray] = field(default_factory=list)
    cell: List[np.ndarray] = field(default_factory=list)


def reset(model: QuantizedModel, batch: int) -> SimState:
    """h = zp_h (a real zero), c = 0, as NAME_reset."""
    states = [_initial_state(l, batch) for l in model.recurrent_layers]
    return SimState(hidden=[h for h, _ in states], cell=[c for _, c in states])


def _layer_step(layer, x, h, c, trace=None):
    """One step of an LSTM or GRU layer: (h_new, c_new); a GRU has no cell state (None)."""
    if isinstance(layer, QGruLayer):
        return gru_layer_step(layer, x, h, trace), None
    return lstm_layer_step(layer, x, h, c, trace)


def _layers_step(model: QuantizedModel, state: SimState, x_t: np.ndarray, traces=None) -> np.ndarray:
    act = x_t
    for k, layer in enumerate(model.recurrent_layers):
        trace = traces[k] if traces is not None else None
        state.hidden[k], state.cell[k] = _layer_step(layer, act, state.hidden[k], state.cell[k], trace)
        act = state.hidden[k]
    return act


# ------------------------------------------------------------------------- window models (bidirectional)

def _initial_state(layer, batch: int):
    """(h, c) a sequence starts from: the layer's initial vectors, else h = zp_h (a real zero), c = 0."""
    hidden = getattr(layer, "initial_hidden", None)
    cell = getattr(layer, "initial_cell", None)
    h = np.full((batch, layer.hidden_size), layer.hidden_q.zero_point, dtype=np.int64) if hidden is None else \
        np.tile(hidden.astype(np.int64), (batch, 1))
    c = np.zeros((batch, layer.hidden_size), dtype=np.int64) if cell is None else \
        np.tile(cell.astype(np.int64), (batch, 1))
    return h, c


def _layer_over_window(layer, x: np.ndarray, reverse: bool = False):
    """Run one direction over x [N, T, I]: outputs [N, T, H] in input time order, and the final h."""
    h, c = _initial_state(layer, x.shape[0])
    out = np.zeros((x.shape[0], x.shape[1], layer.hidden_size), dtype=np.int64)
    for t in (range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])):
        h, c = _layer_step(layer, x[:, t, :], h, c)
        out[:, t] = h
    return out, h


def run_window(model: QuantizedModel, x_q: np.ndarray) -> np.ndarray:
    """As NAME_run of a window model: layer by layer over the whole sequence, from the initial state."""
    act = np.asarray(x_q, dtype=np.int64)
    final = None
    for layer in model.recurrent_layers:
        if isinstance(layer, QBidirectionalLayer):
            fwd, fwd_final = _layer_over_window(layer.forward, act)
            bwd, bwd_final = _layer_over_window(layer.backward, act, reverse=True)
            act, final = np.concatenate([fwd, bwd], axis=-1), np.concatenate([fwd_final, bwd_final], axis=-1)
        else:
            act, final = _layer_over_window(layer, act)
    if model.sequence_output:
        return np.stack([head_forward(model, act[:, t]) for t in range(act.shape[1])], axis=1).astype(np.int8)
    chosen = final if model.last_step_from == "final_state" else act[:, -1]
    return head_forward(model, chosen).astype(np.int8)


def step(model: QuantizedModel, state: SimState, x_t: np.ndarray) -> np.ndarray:
    """As NAME_step: one input frame per sequence [N, I] -> the head's output for this step [N, O]."""
    return head_forward(model, _layers_step(model, state, np.asarray(x_t, dtype=np.int64))).astype(np.int8)


def run(model: QuantizedModel, state: SimState, x_q: np.ndarray, traces=None) -> np.ndarray:
    """As NAME_run: x_q [N, T, I] int8 -> [N, T, O] (sequence models) or [N, O] (last step only)."""
    x = np.asarray(x_q, dtype=np.int64)
    outputs = []
    for t in range(x.shape[1]):
        act = _layers_step(model, state, x[:, t, :], traces)
        if model.sequence_output or t == x.shape[1] - 1:
            outputs.append(head_forward(model, act))
    if model.sequence_output:
        return np.stack(outputs, axis=1).astype(np.int8)
    return outputs[-1].astype(np.int8)


def simulate(model: QuantizedModel, x_q: np.ndarray, trace: bool = False):
    """Run each sequence from a reset state. Returns y_q, or (y_q, traces) with trace=True where
    traces[layer][step] is a GateTrace of integer values for debugging."""
    x_q = np.asarray(x_q)
    if x_q.ndim != 3 or x_q.shape[2] != model.input_size or x_q.dtype != np.int8:
        raise InputDataError(f"simulator input must be int8 [N, T, {model.input_size}], got "
                             f"{x_q.dtype} {tuple(x_q.shape)}")
    if not model.streaming:
        if trace:
            raise InputDataError("--trace is available for streaming models only (not bidirectional ones)")
        if x_q.shape[1] > model.max_steps:
            raise InputDataError(f"sequences of {x_q.shape[1]} steps exceed the model's window of "
                                 f"{model.max_steps} (--max-steps at compile time)")
        return run_window(model, x_q)
    traces = [[] for _ in model.recurrent_layers] if trace else None
    y = run(model, reset(model, x_q.shape[0]), x_q, traces)
    return (y, traces) if trace else y
