"""Reading the files `torch.save` writes (the zip format, PyTorch >= 1.6) without torch, and
without running any code from the file.

Such a file is a zip holding one folder (`<archive>/`) with:

    data.pkl      the saved object as a pickle; each tensor is a call of
                  torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, ...),
                  its storage a persistent id ("storage", torch.FloatStorage, key, location, numel)
    data/<key>    the raw bytes of each storage
    byteorder     "little" or "big" (absent in old files: little)

The pickle is read by an Unpickler whose find_class returns only the few harmless callables a
state_dict (or a checkpoint dict of them) needs, all defined here: collections.OrderedDict,
stand-ins for torch's tensor and parameter rebuild functions that build numpy arrays, markers
for the storage types, set/frozenset, and a latin-1-only _codecs.encode (how protocol 2 pickles
bytes). Any other global (a pickled nn.Module, a custom class,
os.system, ...) stops the reading before anything is called, with one line naming it.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

from ..errors import ModelFormatError

# torch.<Name>Storage -> numpy dtype (without byte order); "bfloat16" is widened to float32.
STORAGE_DTYPES = {
    "FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "bfloat16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1",
    "BoolStorage": "?", "ComplexFloatStorage": "c8", "ComplexDoubleStorage": "c16",
}
# The first bytes of the legacy (non-zip) format: a pickled int, torch's magic number 0x1950a86a20f9469cfc6c.
LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
EXPORT_HINT = ("save model.state_dict() with torch.save, or export the model to ONNX (torch.onnx.export) "
               "and compile the .onnx file")


@dataclass(frozen=True)
class StorageType:
    """What find_class returns for torch.FloatStorage and friends."""

    name: str

    @property
    def dtype(self) -> str:
        return STORAGE_DTYPES[self.name]


def is_torch_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n == "data.pkl" or n.endswith("/data.pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def is_legacy_torch_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(LEGACY_MAGIC)) == LEGACY_MAGIC
    except OSError:
        return False


def load_torch_zip(path) -> object:
    """The object saved in a zip-format torch.save file, every tensor as a numpy array (same
    dtype, bfloat16 widened to float32; copied, C-contiguous). Raises ModelFormatError, one line,
    when the pickle needs anything else ("not a plain state_dict") or the file is damaged."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pickles = [n for n in names if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1)]
            if len(pickles) != 1:
                raise ModelFormatError(f"'{path}' is a zip but not a torch.save file (it has "
                                       f"{len(pickles)} top-level data.pkl entries, expected 1)")
            prefix = pickles[0][:-len("data.pkl")]
            byteorder = "little"
            if f"{prefix}byteorder" in names:
                byteorder = zf.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
                if byteorder not in ("little", "big"):
                    raise ModelFormatError(f"'{path}': unknown byte order {byteorder!r} in {prefix}byteorder")
            unpickler = _Unpickler(io.BytesIO(zf.read(pickles[0])), zf, prefix, "<" if byteorder == "little" else ">",
                                   path)
            return unpickler.load()
    except ModelFormatError as exc:  # name the file once, in front
        if str(exc).startswith(f"'{path}'"):
            raise
        raise ModelFormatError(f"'{path}': {exc}") from None
    except zipfile.BadZipFile as exc:
        raise ModelFormatError(f"'{path}' is not a readable PyTorch file (damaged zip: {exc})") from None
    except Exception as exc:  # UnpicklingError, EOFError, a wrong argument in the pickle, ...
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ModelFormatError(f"'{path}' is not a readable PyTorch file ({type(exc).__name__}: {first})") from None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, zf: zipfile.ZipFile, prefix: str, endian: str, path: Path):
        super().__init__(file)
        self.zf, self.prefix, self.endian, self.path = zf, prefix, endian, path
        self.storages: Dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name)
        module = "builtins" if module == "__builtin__" else module  # protocol 2 writes Python 2's name
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise ModelFormatError(f"'{self.path}' is not a plain state_dict: rebuilding it would need "
                                   f"{module}.{name} (a pickled nn.Module or another Python object), and "
                                   f"lstm-edge runs no code from model files; {EXPORT_HINT}")
        return allowed

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise ModelFormatError(f"'{self.path}' is not a plain state_dict: it refers to an object "
                                   f"{str(pid)[:60]!r} that is not a tensor storage; {EXPORT_HINT}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, StorageType):
            raise ModelFormatError(f"'{self.path}' is not a plain state_dict: a storage of type "
                                   f"{storage_type!r}; {EXPORT_HINT}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise ModelFormatError(f"'{self.path}': malformed storage reference {pid!r}")
        cache_key = f"{key}:{storage_type.name}"
        if cache_key not in self.storages:
            self.storages[cache_key] = self._read_storage(storage_type, key, numel)
        return self.storages[cache_key]

    def _read_storage(self, storage_type: StorageType, key: str, numel: int) -> np.ndarray:
        entry = f"{self.prefix}data/{key}"
        try:
            raw = self.zf.read(entry)
        except KeyError:
            raise ModelFormatError(f"'{self.path}': tensor data {entry} is missing from the archive") from None
        bfloat16 = storage_type.dtype == "bfloat16"
        dtype = np.dtype(f"{self.endian}u2" if bfloat16 else self.endian + storage_type.dtype)
        if len(raw) < numel * dtype.itemsize:
            raise ModelFormatError(f"'{self.path}': {entry} holds {len(raw)} bytes, a {storage_type.name} of "
                                   f"{numel} elements needs {numel * dtype.itemsize}")
        array = np.frombuffer(raw, dtype=dtype, count=numel)
        if bfloat16:  # the upper half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array.astype(array.dtype.newbyteorder("="), copy=False)


def _ints(value, what: str) -> Tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                      for v in value):
        raise ModelFormatError(f"tensor {what} {value!r} is not a tuple of integers")
    return tuple(value)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> np.ndarray:
    """Stand-in for torch._utils._rebuild_tensor_v2: the tensor viewed in its storage, copied.
    (requires_grad, backward hooks and metadata mean nothing here.)"""
    if not isinstance(storage, np.ndarray):
        raise ModelFormatError(f"a tensor's storage is a {type(storage).__name__}, not tensor data")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    if not isinstance(storage_offset, int) or storage_offset < 0 or len(shape) != len(strides) \
            or any(n < 0 for n in shape) or any(s < 0 for s in strides):
        raise ModelFormatError(f"tensor with offset {storage_offset!r}, size {shape} and stride {strides} is "
                               f"malformed")
    if 0 in shape:
        return np.zeros(shape, storage.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(shape, strides))
    if last >= storage.size:
        raise ModelFormatError(f"tensor with offset {storage_offset}, size {shape} and stride {strides} reaches "
                               f"past its storage of {storage.size} elements")
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=shape,
                                           strides=tuple(s * storage.itemsize for s in strides), writeable=False)
    return np.array(view, copy=True, order="C")


def _encode(text, encoding="latin1"):
    """Stand-in for _codecs.encode, which protocol-2 pickles use for bytes values: latin-1 only."""
    if not isinstance(text, str) or str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise ModelFormatError(f"unexpected encode({type(text).__name__}, {encoding!r}) in the pickle")
    return text.encode("latin-1")


def _rebuild_parameter(data, *_ignored):
    """Stand-in for torch._utils._rebuild_parameter(_with_state): an nn.Parameter is its data."""
    if not isinstance(data, np.ndarray):
        raise ModelFormatError(f"a parameter's data is a {type(data).__name__}, not a tensor")
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("_codecs", "encode"): _encode,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}
