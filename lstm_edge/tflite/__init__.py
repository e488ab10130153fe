"""TensorFlow Lite flatbuffers: the schema subset we use (schema.py) and the exporter (writer.py)."""

from __future__ import annotations


def export_tflite(qmodel, steps: int) -> bytes:
    """The quantized model as .tflite bytes for TensorFlow Lite Micro (see writer.export_tflite)."""
    from .writer import export_tflite as _export

    return _export(qmodel, steps)


__all__ = ["export_tflite"]
