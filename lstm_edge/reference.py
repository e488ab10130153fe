"""Float reference forward pass of the IR (numpy, float64 inside).

Written with the ONNX spec's names: it = f(Xt*Wi + Ht-1*Ri + Wbi + Rbi), Ct = ft (.) Ct-1 + it (.) ct,
Ht = ot (.) h(Ct). It is the oracle for importers (checked against onnxruntime) and the source of
the ranges that calibration records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import numpy as np

from .ir import Activation, BidirectionalLayer, DenseLayer, FloatModel, GruLayer, LstmLayer


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free form of 1 / (1 + exp(-x))


_ACTIVATIONS = {
    Activation.NONE: lambda v: v,
    Activation.RELU: lambda v: np.maximum(v, 0.0),
    Activation.TANH: np.tanh,
    Activation.SIGMOID: sigmoid,
}


@dataclass
class FloatTrace:
    """Intermediate tensors of one forward pass, for calibration and debugging.

    hidden[l], cell[l]: [N, T, H] of LSTM layer l, indexed by input time.
    dense_pre[d], dense_out[d]: dense layer d before and after its activation,
    [N, T, K] for sequence models, [N, K] for last-step heads.
    """

    hidden: List[np.ndarray] = field(default_factory=list)
    cell: List[np.ndarray] = field(default_factory=list)
    dense_pre: List[np.ndarray] = field(default_factory=list)
    dense_out: List[np.ndarray] = field(default_factory=list)


def initial_state(vector, batch: int, width: int) -> np.ndarray:
    """[N, H] start state: the layer's initial vector for every sequence, or zeros."""
    if vector is None:
        return np.zeros((batch, width))
    return np.tile(np.asarray(vector, dtype=np.float64), (batch, 1))


def lstm_layer_forward(layer: LstmLayer, x: np.ndarray):
    """x [N, T, I] -> (H_all [N, T, H], C_all [N, T, H]); zero initial state."""
    n, steps, _ = x.shape
    w_x = layer.w_x.astype(np.float64)
    w_h = layer.w_h.astype(np.float64)
    bias = layer.bias.astype(np.float64)
    h_t = initial_state(layer.initial_h, n, layer.hidden_size)
    c_t = initial_state(layer.initial_c, n, layer.hidden_size)
    h_all = np.zeros((n, steps, layer.hidden_size))
    c_all = np.zeros_like(h_all)
    order = range(steps - 1, -1, -1) if layer.reverse else range(steps)
    for t in order:
        x_t = x[:, t, :].astype(np.float64)
        # pre[g] = Xt*W[g]^T + Ht-1*R[g]^T + B[g], for g in (i, f, c, o)
        pre = np.einsum("nk,ghk->gnh", x_t, w_x) + np.einsum("nk,ghk->gnh", h_t, w_h) + bias[:, None, :]
        if layer.peephole is not None:  # it += Pi (.) Ct-1, ft += Pf (.) Ct-1 (ot: Ct, below)
            pre[0] += layer.peephole[0] * c_t
            pre[1] += layer.peephole[1] * c_t
        clip = (lambda v: np.clip(v, -layer.clip, layer.clip)) if layer.clip is not None else (lambda v: v)
        pre[:3] = clip(pre[:3])  # ONNX clip acts on the activations' inputs (the gates, not Ct)
        i_t, f_t = sigmoid(pre[0]), sigmoid(pre[1])
        if layer.input_forget:  # coupled gates
            f_t = 1.0 - i_t
        g_t = np.tanh(pre[2])
        c_t = f_t * c_t + i_t * g_t
        if layer.peephole is not None:
            pre[3] += layer.peephole[2] * c_t
        o_t = sigmoid(clip(pre[3]))
        h_t = o_t * np.tanh(c_t)
        h_all[:, t], c_all[:, t] = h_t, c_t
    return h_all, c_all


def gru_layer_forward(layer: GruLayer, x: np.ndarray):
    """x [N, T, I] -> (H_all [N, T, H], H_all): a GRU has no separate cell state, so its
    hidden state is reported in both places calibration looks."""
    n, steps, _ = x.shape
    w_x, w_h = layer.w_x.astype(np.float64), layer.w_h.astype(np.float64)
    b_x, b_h = layer.b_x.astype(np.float64), layer.b_h.astype(np.float64)
    h_t = initial_state(layer.initial_h, n, layer.hidden_size)
    h_all = np.zeros((n, steps, layer.hidden_size))
    order = range(steps - 1, -1, -1) if layer.reverse else range(steps)
    for t in order:
        # gx[g] = Xt*W[g]^T + Wb[g];  gh[g] = Ht-1*R[g]^T + Rb[g], for g in (z, r, n)
        gx = np.einsum("nk,ghk->gnh", x[:, t, :].astype(np.float64), w_x) + b_x[:, None, :]
        gh = np.einsum("nk,ghk->gnh", h_t, w_h) + b_h[:, None, :]
        clip = (lambda v: np.clip(v, -layer.clip, layer.clip)) if layer.clip is not None else (lambda v: v)
        z_t = sigmoid(clip(gx[0] + gh[0]))
        r_t = sigmoid(clip(gx[1] + gh[1]))
        if layer.linear_before_reset:  # nt = tanh(Xt*Wn^T + Wbn + rt (.) (Ht-1*Rn^T + Rbn))
            n_t = np.tanh(clip(gx[2] + r_t * gh[2]))
        else:  # nt = tanh(Xt*Wn^T + Wbn + (rt (.) Ht-1)*Rn^T + Rbn)
            n_t = np.tanh(clip(gx[2] + (r_t * h_t) @ w_h[2].T + b_h[2]))
        h_t = (1.0 - z_t) * n_t + z_t * h_t
        h_all[:, t] = h_t
    return h_all, h_all


def bidirectional_layer_forward(layer: BidirectionalLayer, x: np.ndarray):
    """Merged outputs [N, T, 2H or H]; the cell states of both directions side by side [N, T, 2H]."""
    h_fwd, c_fwd = recurrent_layer_forward(layer.forward, x)
    h_bwd, c_bwd = recurrent_layer_forward(layer.backward, x[:, ::-1])
    h_bwd, c_bwd = h_bwd[:, ::-1], c_bwd[:, ::-1]  # back in input time order
    merged = np.concatenate([h_fwd, h_bwd], axis=-1) if layer.merge == "concat" else h_fwd + h_bwd
    return merged, np.concatenate([c_fwd, c_bwd], axis=-1)


def recurrent_layer_forward(layer, x: np.ndarray):
    """(hidden sequence, cell-state sequence) of an LSTM, GRU or bidirectional layer."""
    if isinstance(layer, BidirectionalLayer):
        return bidirectional_layer_forward(layer, x)
    if isinstance(layer, GruLayer):
        return gru_layer_forward(layer, x)
    return lstm_layer_forward(layer, x)


def dense_forward(dense: DenseLayer, x: np.ndarray):
    """x [..., K] -> (pre-activation, activation output), both [..., N]."""
    pre = x.astype(np.float64) @ dense.w.astype(np.float64).T + dense.b.astype(np.float64)
    return pre, _ACTIVATIONS[dense.activation](pre)


def last_step(layer, h_all: np.ndarray, last_step_from: str = "final_state") -> np.ndarray:
    """The output a last-step model uses. "last_index": the sequence at t = T-1. "final_state"
    (Y_h): the last step each direction processed (t=0 for a reverse layer or direction)."""
    if last_step_from == "last_index" or not (layer.reverse or isinstance(layer, BidirectionalLayer)):
        return h_all[:, -1]
    if not isinstance(layer, BidirectionalLayer):
        return h_all[:, 0]
    if layer.merge == "sum":
        raise ValueError("the final state of a sum-merged bidirectional layer is not defined")
    width = layer.forward.hidden_size
    return np.concatenate([h_all[:, -1, :width], h_all[:, 0, width:]], axis=-1)


def forward(model: FloatModel, x: np.ndarray, trace: FloatTrace | None = None,
            apply_softmax: bool = True) -> np.ndarray:
    """Run the model on x [N, T, F] (batch-first).

    Returns [N, T, O] for sequence models, [N, O] for last-step models. With `trace`, fills
    in the intermediate tensors. `apply_softmax=False` returns the logits the compiled model
    emits when the graph ends in (Log)Softmax.
    """
    act = np.asarray(x, dtype=np.float64)
    for layer in model.recurrent_layers:
        act, cell = recurrent_layer_forward(layer, act)
        if trace is not None:
            trace.hidden.append(act)
            trace.cell.append(cell)
    if not model.sequence_output:
        act = last_step(model.recurrent_layers[-1], act, model.last_step_from)
    for dense in model.head:
        pre, act = dense_forward(dense, act)
        if trace is not None:
            trace.dense_pre.append(pre)
            trace.dense_out.append(act)
    if apply_softmax and model.final_softmax:
        act = softmax(act, log=model.final_softmax == "logsoftmax")
    return act.astype(np.float32)


def softmax(v: np.ndarray, log: bool = False) -> np.ndarray:
    shifted = v - v.max(axis=-1, keepdims=True)
    log_sum = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return shifted - log_sum if log else np.exp(shifted - log_sum)
