"""The library API that the CLI wraps: one function per stage of the pipeline."""

from __future__ import annotations

from pathlib import Path

from . import quantized_model as _qm_io
from .bundle import load_bundle_quantized, write_bundle
from .calibration import CalibrationRanges, calibrate, load_sequences
from .importers import load_model  # noqa: F401  (re-exported)
from .quantizer import quantize  # noqa: F401  (re-exported)
from .simulator import simulate  # noqa: F401  (re-exported)


def calibrate_model(model, data, method: str = "minmax", percentile: float = 99.99,
                    progress=None) -> CalibrationRanges:
    """Ranges of every tensor; `data` is a path (.npy/.npz) or an array [N, T, F] batch-first."""
    if isinstance(data, (str, Path)):
        data = load_sequences(data, model.input_size)
    else:
        from .calibration import check_sequences
        data = check_sequences(data, model.input_size, "calibration data")
    return calibrate(model, data, method=method, percentile=percentile, progress=progress)


def write_c(qmodel, out_dir, float_model=None) -> Path:
    """Write NAME.h, NAME.c, NAME.qmodel.json (and NAME.float.npz) into out_dir, whole or not at all."""
    return write_bundle(qmodel, out_dir, float_model)


def load_quantized(out_dir_or_file):
    """The QuantizedModel from a compile output folder or a *.qmodel.json file."""
    path = Path(out_dir_or_file)
    return _qm_io.load(path) if path.suffix == ".json" else load_bundle_quantized(path)
