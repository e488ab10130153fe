"""Assembling a FloatModel layer by layer, for the importers that read a list of layers
(Keras, PyTorch state_dict + arch, npz).

The builder receives the layers in data-flow order and refuses, with one line naming the
layer, every order the IR cannot express: a recurrent layer (LSTM, GRU, bidirectional) after a
dense layer or after the last-step selection, an activation that does not follow a dense layer,
anything after a softmax.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from ..errors import UnsupportedModelError
from ..ir import Activation, BidirectionalLayer, DenseLayer, FloatModel, GruLayer, LstmLayer

# Activation names as the frameworks spell them -> the IR's dense activation.
DENSE_ACTIVATIONS = {
    None: Activation.NONE, "none": Activation.NONE, "linear": Activation.NONE, "identity": Activation.NONE,
    "relu": Activation.RELU, "tanh": Activation.TANH, "sigmoid": Activation.SIGMOID,
}
# Allowed only at the very end: the compiled model outputs the logits before them.
FINAL_ACTIVATIONS = {"softmax": "softmax", "log_softmax": "logsoftmax", "logsoftmax": "logsoftmax"}
ACTIVATION_CHOICES = "linear, relu, tanh, sigmoid, and softmax or log_softmax on the last layer"
LAST_STEP_SOURCES = ("final_state", "last_index")


def layer_kind(layer) -> str:
    """'LSTM', 'GRU', 'bidirectional LSTM', ... for messages."""
    if isinstance(layer, BidirectionalLayer):
        return f"bidirectional {layer_kind(layer.forward)}"
    return "GRU" if isinstance(layer, GruLayer) else "LSTM"


class StackBuilder:
    """Recurrent layers (LSTM, GRU, bidirectional), then an optional last-step selection, then
    dense layers with activations."""

    def __init__(self):
        self.lstm: List["LstmLayer | GruLayer | BidirectionalLayer"] = []
        self.head: List[DenseLayer] = []
        self.sequence = True  # False once only the last step is kept
        self.last_step_from = "final_state"
        self.softmax: Optional[str] = None
        self._softmax_by = ""

    def _check_open(self, where: str) -> None:
        if self.softmax:
            raise UnsupportedModelError(f"{where}: nothing may follow the final {self._softmax_by}; "
                                        f"softmax is only supported as the last layer")

    def add_lstm(self, layer, where: str) -> None:
        """Any recurrent layer: LstmLayer, GruLayer or BidirectionalLayer."""
        self._check_open(where)
        kind = layer_kind(layer)
        if self.head:
            raise UnsupportedModelError(f"{where}: a recurrent layer ({kind}) after dense layer "
                                        f"'{self.head[-1].name}' is not supported; dense layers may only "
                                        f"follow the last recurrent layer")
        if not self.sequence:
            raise UnsupportedModelError(f"{where}: a recurrent layer ({kind}) after the last-step selection is not "
                                        f"supported; every recurrent layer but the last must return the full "
                                        f"sequence")
        self.lstm.append(layer)

    def keep_last_step(self, where: str, source: str = "final_state") -> None:
        """Keep one step's output. `source` (FloatModel.last_step_from): "final_state", the final
        state of each direction (Keras return_sequences=False, PyTorch h_n), or "last_index", the
        output sequence at t = T-1 (PyTorch out[:, -1]). They differ only for bidirectional layers."""
        self._check_open(where)
        if source not in LAST_STEP_SOURCES:
            raise ValueError(f"unknown last-step source {source!r}")
        if not self.lstm:
            raise UnsupportedModelError(f"{where}: taking the last step needs a recurrent layer before it")
        if not self.sequence:
            raise UnsupportedModelError(f"{where}: the last step is already selected")
        last = self.lstm[-1]
        if source == "final_state" and isinstance(last, BidirectionalLayer) and last.merge == "sum":
            raise UnsupportedModelError(f"{where}: the final state of bidirectional layer '{last.name}' with a "
                                        f"sum merge is not supported; use a concat merge, or keep the sequence")
        self.sequence = False  # dense layers act per step, so last-then-dense == dense-then-last
        self.last_step_from = source

    def add_dense(self, w: np.ndarray, b: Optional[np.ndarray], activation, where: str, name: str) -> None:
        """w [out, in]; `activation` as the framework names it (None for linear)."""
        self._check_open(where)
        if not self.lstm:
            raise UnsupportedModelError(f"{where}: a dense layer before the first recurrent layer is not "
                                        f"supported; the model must start with an LSTM or GRU layer")
        key = activation.lower() if isinstance(activation, str) else activation
        if key not in DENSE_ACTIVATIONS and key not in FINAL_ACTIVATIONS:
            raise UnsupportedModelError(f"{where}: activation '{activation}' is not supported; "
                                        f"supported: {ACTIVATION_CHOICES}")
        if b is None:
            b = np.zeros(w.shape[0], np.float32)
        self.head.append(DenseLayer(w, b, DENSE_ACTIVATIONS.get(key, Activation.NONE), name=name))
        if key in FINAL_ACTIVATIONS:
            self.softmax, self._softmax_by = FINAL_ACTIVATIONS[key], f"{activation} of '{name}'"

    def add_activation(self, activation: str, where: str) -> None:
        """A separate activation stage: folded into the dense layer just before it."""
        self._check_open(where)
        key = activation.lower()
        if key in FINAL_ACTIVATIONS:
            if not self.lstm:
                raise UnsupportedModelError(f"{where}: {activation} needs a recurrent layer before it")
            self.softmax, self._softmax_by = FINAL_ACTIVATIONS[key], activation
            return
        if key not in DENSE_ACTIVATIONS:
            raise UnsupportedModelError(f"{where}: activation '{activation}' is not supported; "
                                        f"supported: {ACTIVATION_CHOICES}")
        if not self.head:
            raise UnsupportedModelError(f"{where}: {activation} directly after a recurrent layer "
                                        f"({layer_kind(self.lstm[-1]) if self.lstm else 'LSTM'}) is not "
                                        f"supported; an activation must follow a dense (linear) layer")
        last = self.head[-1]
        if last.activation is not Activation.NONE:
            raise UnsupportedModelError(f"{where}: dense layer '{last.name}' already has activation "
                                        f"{last.activation.value}; one activation per dense layer")
        self.head[-1] = DenseLayer(last.w, last.b, DENSE_ACTIVATIONS[key], name=last.name)

    def build(self, name: str, source: str, notes=(), what: str = "the model") -> FloatModel:
        if not self.lstm:
            raise UnsupportedModelError(f"{what} has no recurrent layer; the model must start with an LSTM "
                                        f"or GRU layer")
        return FloatModel(tuple(self.lstm), tuple(self.head), sequence_output=self.sequence,
                          final_softmax=self.softmax, last_step_from=self.last_step_from, name=name,
                          source=source, notes=tuple(notes))
