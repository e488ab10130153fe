"""Save / load the float IR as .npz, so `verify` can measure int8-vs-float error from the
compile output folder alone (the firmware never needs this file)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from .errors import ModelFormatError
from .ir import DenseLayer, FloatModel, GruLayer, LstmLayer


def save_float_model(model: FloatModel, path) -> None:
    arrays = {}
    for k, l in enumerate(model.lstm_layers):
        if isinstance(l, GruLayer):
            arrays.update({f"layer{k}_w_x": l.w_x, f"layer{k}_w_h": l.w_h, f"layer{k}_b_x": l.b_x,
                           f"layer{k}_b_h": l.b_h})
        else:
            arrays.update({f"layer{k}_w_x": l.w_x, f"layer{k}_w_h": l.w_h, f"layer{k}_bias": l.bias})
    for k, d in enumerate(model.head):
        arrays.update({f"dense{k}_w": d.w, f"dense{k}_b": d.b})
    meta = {
        "name": model.name, "source": model.source, "sequence_output": model.sequence_output,
        "final_softmax": model.final_softmax, "notes": list(model.notes),
        "lstm_layers": [{"name": l.name, "reverse": l.reverse, "kind": "gru" if isinstance(l, GruLayer) else "lstm",
                         "linear_before_reset": bool(getattr(l, "linear_before_reset", False))}
                        for l in model.lstm_layers],
        "head": [{"name": d.name, "activation": d.activation.value} for d in model.head],
    }
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    write_npz_deterministic(path, arrays)


def write_npz_deterministic(path, arrays) -> None:
    """Like np.savez, but with fixed zip timestamps so identical input gives identical bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[key]), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())


def load_float_model(path) -> FloatModel:
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            layers = [_layer_from(z, k, m) for k, m in enumerate(meta["lstm_layers"])]
            head = [DenseLayer(z[f"dense{k}_w"], z[f"dense{k}_b"], m["activation"], name=m["name"])
                    for k, m in enumerate(meta["head"])]
    except (OSError, KeyError, ValueError) as exc:
        raise ModelFormatError(f"{path}: not a readable float model ({exc})")
    return FloatModel(tuple(layers), tuple(head), sequence_output=meta["sequence_output"],
                      final_softmax=meta["final_softmax"], name=meta["name"], source=meta["source"],
                      notes=tuple(meta["notes"]))


def _layer_from(z, k: int, meta: dict):
    if meta.get("kind") == "gru":
        return GruLayer(z[f"layer{k}_w_x"], z[f"layer{k}_w_h"], z[f"layer{k}_b_x"], z[f"layer{k}_b_h"],
                        linear_before_reset=meta["linear_before_reset"], reverse=meta["reverse"], name=meta["name"])
    return LstmLayer(z[f"layer{k}_w_x"], z[f"layer{k}_w_h"], z[f"layer{k}_bias"], reverse=meta["reverse"],
                     name=meta["name"])
