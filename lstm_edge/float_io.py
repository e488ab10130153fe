"""Save / load the float IR as .npz, so `verify` can measure int8-vs-float error from the
compile output folder alone (the firmware never needs this file)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from .errors import ModelFormatError
from .ir import BidirectionalLayer, DenseLayer, FloatModel, GruLayer, LstmLayer


def save_float_model(model: FloatModel, path) -> None:
    arrays = {}
    layer_meta = [_save_layer(l, f"layer{k}", arrays) for k, l in enumerate(model.recurrent_layers)]
    for k, d in enumerate(model.head):
        arrays.update({f"dense{k}_w": d.w, f"dense{k}_b": d.b})
    meta = {
        "name": model.name, "source": model.source, "sequence_output": model.sequence_output,
        "final_softmax": model.final_softmax, "notes": list(model.notes),
        "recurrent_layers": layer_meta, "last_step_from": model.last_step_from,
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
            layers = [_load_layer(z, f"layer{k}", m) for k, m in enumerate(meta["recurrent_layers"])]
            head = [DenseLayer(z[f"dense{k}_w"], z[f"dense{k}_b"], m["activation"], name=m["name"])
                    for k, m in enumerate(meta["head"])]
    except (OSError, KeyError, ValueError) as exc:
        raise ModelFormatError(f"{path}: not a readable float model ({exc})")
    return FloatModel(tuple(layers), tuple(head), sequence_output=meta["sequence_output"],
                      final_softmax=meta["final_softmax"], name=meta["name"], source=meta["source"],
                      last_step_from=meta.get("last_step_from", "final_state"),
                      notes=tuple(meta["notes"]))


def _save_layer(layer, key: str, arrays: dict) -> dict:
    """Put a layer's arrays under `key`; return its metadata."""
    if isinstance(layer, BidirectionalLayer):
        return {"kind": "bidirectional", "name": layer.name, "merge": layer.merge,
                "forward": _save_layer(layer.forward, key + "f", arrays),
                "backward": _save_layer(layer.backward, key + "b", arrays)}
    arrays.update({f"{key}_w_x": layer.w_x, f"{key}_w_h": layer.w_h})
    for state in ("initial_h", "initial_c"):
        if getattr(layer, state, None) is not None:
            arrays[f"{key}_{state}"] = getattr(layer, state)
    meta = {"name": layer.name, "reverse": layer.reverse}
    if isinstance(layer, GruLayer):
        arrays.update({f"{key}_b_x": layer.b_x, f"{key}_b_h": layer.b_h})
        return dict(meta, kind="gru", linear_before_reset=bool(layer.linear_before_reset))
    arrays[f"{key}_bias"] = layer.bias
    return dict(meta, kind="lstm")


def _load_layer(z, key: str, meta: dict):
    if meta["kind"] == "bidirectional":
        return BidirectionalLayer(_load_layer(z, key + "f", meta["forward"]), _load_layer(z, key + "b", meta["backward"]),
                                  merge=meta["merge"], name=meta["name"])
    state = lambda name: z[f"{key}_{name}"] if f"{key}_{name}" in z.files else None  # noqa: E731
    if meta["kind"] == "gru":
        return GruLayer(z[f"{key}_w_x"], z[f"{key}_w_h"], z[f"{key}_b_x"], z[f"{key}_b_h"],
                        linear_before_reset=meta["linear_before_reset"], reverse=meta["reverse"], name=meta["name"],
                        initial_h=state("initial_h"))
    return LstmLayer(z[f"{key}_w_x"], z[f"{key}_w_h"], z[f"{key}_bias"], reverse=meta["reverse"], name=meta["name"],
                     initial_h=state("initial_h"), initial_c=state("initial_c"))
