"""The compile output folder: NAME.h and NAME.c for the firmware, NAME.qmodel.json (what the C
contains, read by `simulate` and `verify`) and NAME.float.npz (the float model, for accuracy
reports). Written whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Optional

from . import quantized_model as qm_io
from .codegen import render
from .errors import LstmEdgeError
from .float_io import load_float_model, save_float_model
from .ir import FloatModel
from .quantized_model import QuantizedModel

QMODEL_SUFFIX = ".qmodel.json"
FLOAT_SUFFIX = ".float.npz"


def _check_replaceable(out_dir: Path) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise LstmEdgeError(f"output {out_dir} exists and is not a folder")
    contents = list(out_dir.iterdir())
    if contents and not any(p.name.endswith(QMODEL_SUFFIX) for p in contents):
        raise LstmEdgeError(f"output folder {out_dir} is not empty and was not written by lstm-edge; "
                            "choose another folder")


def write_bundle(model: QuantizedModel, out_dir, float_model: Optional[FloatModel] = None,
                 extra_files: Optional[Dict[str, bytes]] = None) -> Path:
    """Write everything into a temporary sibling folder, then swap it in place of out_dir.

    `extra_files` maps plain file names to contents written alongside (e.g. NAME.tflite).
    An existing out_dir is replaced only if it is empty or was written by lstm-edge.
    """
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    extra_files = dict(extra_files or {})
    for fname in extra_files:
        if Path(fname).name != fname or fname in ("", ".", ".."):
            raise LstmEdgeError(f"extra output file name {fname!r} must be a plain file name")
    files = render(model)  # before touching the disk: a rendering error leaves nothing behind
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp.", dir=out_dir.parent))
    try:
        for fname, text in files.items():
            (tmp / fname).write_text(text)
        for fname, data in extra_files.items():
            (tmp / fname).write_bytes(data)
        qm_io.save(model, tmp / f"{model.name}{QMODEL_SUFFIX}")
        if float_model is not None:
            save_float_model(float_model, tmp / f"{model.name}{FLOAT_SUFFIX}")
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old.{os.getpid()}"
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _find(out_dir, suffix: str) -> Path:
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise LstmEdgeError(f"{out_dir}: no such folder (run `lstm-edge compile ... -o {out_dir}` first)")
    found = sorted(out_dir.glob(f"*{suffix}"))
    if len(found) != 1:
        raise LstmEdgeError(f"{out_dir}: expected one *{suffix} written by `lstm-edge compile`, found {len(found)}")
    return found[0]


def load_bundle_quantized(out_dir) -> QuantizedModel:
    return qm_io.load(_find(out_dir, QMODEL_SUFFIX))


def load_bundle_float(out_dir) -> Optional[FloatModel]:
    """The float model saved by compile, or None when the folder has none."""
    try:
        path = _find(out_dir, FLOAT_SUFFIX)
    except LstmEdgeError:
        return None
    return load_float_model(path)
