"""Model importers: each turns a trained model file into the float IR (lstm_edge.ir.FloatModel)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import ModelFormatError, UnsupportedModelError
from ..ir import FloatModel

SUPPORTED_FORMATS = {".onnx": "ONNX", ".keras": "Keras", ".h5": "Keras legacy HDF5", ".hdf5": "Keras legacy HDF5",
                     ".pt": "PyTorch state_dict", ".pth": "PyTorch state_dict", ".npz": "lstm-edge arrays",
                     ".tflite": "TFLite"}
# Each importer (and the packages it needs: onnx, h5py, flatbuffers) is imported only when used.
_IMPORTERS = {".onnx": "onnx", ".keras": "keras", ".h5": "keras", ".hdf5": "keras", ".pt": "torch",
              ".pth": "torch", ".npz": "npz", ".tflite": "tflite"}


def load_model(path, output: Optional[str] = None, arch=None) -> FloatModel:
    """Import the model at `path`, choosing the importer by file extension.

    `output` names the graph output to compile when an ONNX model has several. `arch` describes
    the architecture of a PyTorch state_dict (.pt/.pth; docs/pytorch-arch.md). A `.npz` given
    here is always read as a model (docs/npz-schema.md), never as data."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_FORMATS:
        supported = ", ".join(f"{name} ({ext})" for ext, name in SUPPORTED_FORMATS.items())
        raise UnsupportedModelError(f"'{path}': unsupported model format '{suffix or path.name}'; "
                                    f"supported: {supported}")
    if not path.is_file():
        raise ModelFormatError(f"model file '{path}' not found")
    kind = _IMPORTERS[suffix]
    if output is not None and kind not in ("onnx", "tflite"):
        raise UnsupportedModelError(f"'{path}': choosing an output (--output) applies to ONNX and TFLite models only")
    if arch is not None and kind != "torch":
        raise UnsupportedModelError(f"'{path}': --arch describes PyTorch state_dict files (.pt, .pth) only; "
                                    f"a {SUPPORTED_FORMATS[suffix]} file describes itself")
    if kind == "keras":
        from .keras_importer import load_keras
        return load_keras(path)
    if kind == "torch":
        from .torch_importer import load_torch
        return load_torch(path, arch=arch)
    if kind == "npz":
        from .npz_importer import load_npz_model
        return load_npz_model(path)
    if kind == "tflite":  # a full-integer model gives its dequantized float view (see load_prequantized)
        from .tflite_importer import load_tflite
        return load_tflite(path, output=output)
    from .onnx_importer import load_onnx

    return load_onnx(path, output=output)


def load_prequantized(path, name: str, output: Optional[str] = None):
    """The QuantizedModel of a model file that carries its own integer quantization (a full-integer
    .tflite: compiled with the model's own parameters, bit-exact with TFLite Micro), or None when
    the model is float and needs calibration data."""
    path = Path(path)
    if path.suffix.lower() != ".tflite":
        return None
    if not path.is_file():
        raise ModelFormatError(f"model file '{path}' not found")
    from .tflite_importer import inspect_tflite, load_tflite_quantized
    if not inspect_tflite(path, output).quantized:
        return None
    return load_tflite_quantized(path, name, output=output)


__all__ = ["load_model", "load_prequantized", "SUPPORTED_FORMATS"]
