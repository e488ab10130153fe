"""Calibration: run the float reference over example inputs and record the range of every tensor
the quantizer needs (model input, each layer's hidden output and cell state, each dense output).

Data is read in batches from a memory-mapped .npy (or an .npz member), so memory stays bounded
by the batch size, not the file size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np

from .errors import InputDataError
from .ir import Activation, FloatModel
from .reference import FloatTrace, forward

METHODS = ("minmax", "percentile")
HISTOGRAM_BINS = 4096
Progress = Optional[Callable[[int, int], None]]  # (done, total) in sequences


@dataclass(frozen=True)
class Range:
    min: float
    max: float

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max))


@dataclass(frozen=True)
class CalibrationRanges:
    """Ranges of the float model's tensors. dense_pre / dense_out are before / after activation."""

    input: Range
    hidden: Tuple[Range, ...]
    cell: Tuple[Range, ...]
    dense_pre: Tuple[Range, ...]
    dense_out: Tuple[Range, ...]
    method: str = "minmax"
    sequences: int = 0


# --------------------------------------------------------------------------- loading data

def load_sequences(path, input_size: int, what: str = "calibration data") -> np.ndarray:
    """Open a float [N, T, F] batch-first array from .npy (memory-mapped) or .npz (key 'x' or its only array)."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"{what}: {path}: no such file")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                if "x" in keys:
                    key = "x"
                elif len(keys) == 1:
                    key = keys[0]
                else:
                    raise InputDataError(f"{what}: {path} holds arrays {keys}; name the input array 'x'")
                data = archive[key]
        else:
            data = np.load(path, mmap_mode="r", allow_pickle=False)
    except InputDataError:
        raise
    except Exception as exc:  # numpy raises many types for a corrupt file
        raise InputDataError(f"{what}: {path} is not a readable .npy/.npz file ({exc})")
    return check_sequences(data, input_size, f"{what} ({path.name})")


def check_sequences(data, input_size: int, what: str) -> np.ndarray:
    data = np.asarray(data) if not isinstance(data, np.ndarray) else data
    if data.dtype.kind not in "fiu":
        raise InputDataError(f"{what}: dtype {data.dtype} is not numeric")
    if data.ndim == 2 and input_size == data.shape[1]:
        data = data[None]  # one sequence [T, F]
    if data.ndim != 3:
        raise InputDataError(f"{what}: shape {tuple(data.shape)} is not [N, T, F] batch-first "
                             f"(sequences, steps, {input_size} features)")
    if data.shape[2] != input_size:
        raise InputDataError(f"{what}: {data.shape[2]} features per step, the model expects {input_size} "
                             f"(shape {tuple(data.shape)} read as [N, T, F] batch-first)")
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise InputDataError(f"{what}: shape {tuple(data.shape)} holds no steps")
    for start, chunk in iter_batches(data, 4096):
        bad = ~np.isfinite(chunk)
        if bad.any():
            n, t, f = np.argwhere(bad)[0]
            raise InputDataError(f"{what}: NaN or Inf at sequence {start + n}, step {t}, feature {f}")
    return data


def iter_batches(data: np.ndarray, batch_size: int):
    for start in range(0, data.shape[0], batch_size):
        yield start, np.asarray(data[start:start + batch_size], dtype=np.float32)


# --------------------------------------------------------------------------- observing

def _tensors(model: FloatModel, x: np.ndarray) -> List[np.ndarray]:
    """Input, hidden[l], cell[l], dense_pre[d], dense_out[d], in that flat order."""
    trace = FloatTrace()
    forward(model, x, trace=trace, apply_softmax=False)
    return [x, *trace.hidden, *trace.cell, *trace.dense_pre, *trace.dense_out]


def _minmax_pass(model, data, batch_size, report) -> List[Range]:
    lo = hi = None
    for start, batch in iter_batches(data, batch_size):
        tensors = _tensors(model, batch)
        mins = [float(t.min()) for t in tensors]
        maxs = [float(t.max()) for t in tensors]
        lo = mins if lo is None else [min(a, b) for a, b in zip(lo, mins)]
        hi = maxs if hi is None else [max(a, b) for a, b in zip(hi, maxs)]
        report(start + len(batch))
    return [Range(a, b) for a, b in zip(lo, hi)]


def _percentile_pass(model, data, batch_size, report, extremes: List[Range], percentile: float) -> List[Range]:
    """Second pass: a fixed-size histogram per tensor over its min..max range (bounded memory)."""
    counts = [np.zeros(HISTOGRAM_BINS, dtype=np.int64) for _ in extremes]
    for start, batch in iter_batches(data, batch_size):
        for k, t in enumerate(_tensors(model, batch)):
            r = extremes[k]
            if r.max > r.min:
                counts[k] += np.histogram(t, bins=HISTOGRAM_BINS, range=(r.min, r.max))[0]
        report(start + len(batch))
    tail = (100.0 - percentile) / 100.0
    result = []
    for r, c in zip(extremes, counts):
        if r.max <= r.min or c.sum() == 0:
            result.append(r)
            continue
        edges = np.linspace(r.min, r.max, HISTOGRAM_BINS + 1)
        cdf = np.cumsum(c) / c.sum()
        lo = edges[int(np.searchsorted(cdf, tail, side="left"))]
        hi = edges[int(np.searchsorted(cdf, 1.0 - tail, side="left")) + 1]
        result.append(Range(float(min(lo, hi)), float(max(lo, hi))))
    return result


def calibrate(model: FloatModel, data: np.ndarray, method: str = "minmax", percentile: float = 99.99,
              batch_size: int = 256, progress: Progress = None) -> CalibrationRanges:
    """Ranges of every tensor over `data` [N, T, F] (already checked by check_sequences)."""
    if method not in METHODS:
        raise InputDataError(f"calibration method {method!r} is not one of {', '.join(METHODS)}")
    if not 50.0 < percentile <= 100.0:
        raise InputDataError(f"--percentile {percentile} must be in (50, 100]")
    n = int(data.shape[0])
    passes = 2 if method == "percentile" else 1
    report = (lambda done, p: progress(p * n + done, passes * n)) if progress else (lambda done, p: None)
    ranges = _minmax_pass(model, data, batch_size, lambda d: report(d, 0))
    if method == "percentile":
        ranges = _percentile_pass(model, data, batch_size, lambda d: report(d, 1), ranges, percentile)
    L, D = len(model.recurrent_layers), len(model.head)
    it = iter(ranges)
    take = lambda k: tuple(next(it) for _ in range(k))  # noqa: E731
    inp, hidden, cell, pre, out = take(1)[0], take(L), take(L), take(D), take(D)
    hidden = tuple(_with_initial(r, l, "initial_h") for r, l in zip(hidden, model.recurrent_layers))
    cell = tuple(_with_initial(r, l, "initial_c") for r, l in zip(cell, model.recurrent_layers))
    return CalibrationRanges(input=inp, hidden=hidden, cell=cell, dense_pre=pre, dense_out=out,
                             method=method, sequences=n)


def _with_initial(r: Range, layer, name: str) -> Range:
    """Widen a state's range to hold the layer's constant initial state (it is a value of that state
    too, before the first step)."""
    values = [getattr(d, name, None) for d in (layer.forward, layer.backward)] if hasattr(layer, "backward") \
        else [getattr(layer, name, None)]
    values = [v for v in values if v is not None]
    if not values:
        return r
    return Range(min(r.min, *(float(v.min()) for v in values)), max(r.max, *(float(v.max()) for v in values)))


def needs_pre_activation_range(activation: Activation) -> bool:
    """Table activations (tanh, sigmoid) quantize the dense result before the activation."""
    return activation in (Activation.TANH, Activation.SIGMOID)
