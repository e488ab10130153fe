"""Model importers: each turns a trained model file into the float IR (lstm_edge.ir.FloatModel)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import ModelFormatError, UnsupportedModelError
from ..ir import FloatModel

SUPPORTED_FORMATS = {".onnx": "ONNX"}


def load_model(path, output: Optional[str] = None) -> FloatModel:
    """Import the model at `path`, choosing the importer by file extension.

    `output` names the graph output to compile when the model has several."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_FORMATS:
        supported = ", ".join(f"{name} ({ext})" for ext, name in SUPPORTED_FORMATS.items())
        raise UnsupportedModelError(f"'{path}': unsupported model format '{suffix or path.name}'; "
                                    f"supported: {supported}")
    if not path.is_file():
        raise ModelFormatError(f"model file '{path}' not found")
    from .onnx_importer import load_onnx  # onnx is imported only when an ONNX model is loaded

    return load_onnx(path, output=output)


__all__ = ["load_model", "SUPPORTED_FORMATS"]
