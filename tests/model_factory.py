"""Random float models and inputs for tests (float IR built directly, no importer involved)."""

from typing import Sequence, Tuple

import numpy as np

from lstm_edge.ir import Activation, BidirectionalLayer, DenseLayer, FloatModel, GruLayer, LstmLayer


def random_model(input_size: int, hidden_sizes: Sequence[int], head: Sequence[Tuple[int, str]] = (),
                 sequence_output: bool = True, seed: int = 0, weight_std: float = 0.5,
                 final_softmax=None, kinds: Sequence[str] = (), last_step_from: str = "final_state") -> FloatModel:
    """Recurrent stack with `hidden_sizes`, then dense layers given as (units, activation).
    kinds[k] is "lstm" (default), "gru" (linear_before_reset, as PyTorch) or "gru0" (without), or one
    of those prefixed "bi" for a bidirectional layer of hidden_sizes[k] units per direction."""
    rng = np.random.default_rng(seed)
    layers, width = [], input_size
    for k, h in enumerate(hidden_sizes):
        std = weight_std / np.sqrt(max(width, h) / 8)  # keep gates in a lively range at any width
        kind = kinds[k] if k < len(kinds) else "lstm"
        if kind.startswith("bi"):
            layers.append(BidirectionalLayer(_recurrent(rng, kind[2:], width, h, std, k),
                                             _recurrent(rng, kind[2:], width, h, std, k), name=f"bi{k}"))
            width = 2 * h
        else:
            layers.append(_recurrent(rng, kind, width, h, std, k))
            width = h
    dense = []
    for k, (units, act) in enumerate(head):
        dense.append(DenseLayer(rng.normal(0, 1 / np.sqrt(width), (units, width)), rng.normal(0, 0.2, units),
                                Activation(act), name=f"dense{k}"))
        width = units
    return FloatModel(tuple(layers), tuple(dense), sequence_output=sequence_output, final_softmax=final_softmax,
                      last_step_from=last_step_from, name="m", source="test")


def _recurrent(rng, kind: str, width: int, h: int, std: float, k: int):
    if kind.startswith("gru"):
        return GruLayer(rng.normal(0, std, (3, h, width)), rng.normal(0, std, (3, h, h)),
                        rng.normal(0, 0.3, (3, h)), rng.normal(0, 0.3, (3, h)),
                        linear_before_reset=kind == "gru", name=f"gru{k}")
    return LstmLayer(rng.normal(0, std, (4, h, width)), rng.normal(0, std, (4, h, h)),
                     rng.normal(0, 0.3, (4, h)), name=f"lstm{k}")


def signal_like(rng, n: int, steps: int, features: int, scale: float = 1.0) -> np.ndarray:
    """Smooth, correlated float sequences, like sensor or audio features."""
    base = rng.normal(0, scale, (n, 1, features))
    walk = np.cumsum(rng.normal(0, 0.3 * scale, (n, steps, features)), axis=1)
    return (base + walk).astype(np.float32)
