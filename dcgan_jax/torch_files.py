"""Reads PyTorch `.pth` state_dicts into numpy arrays without torch and without running
pickled code.

A `.pth` file is a pickle; unpickling it normally imports and calls whatever the file
names, so a crafted file runs arbitrary code. Here the unpickler resolves only the few
names a state_dict needs (OrderedDict, the tensor-rebuild function and the storage types)
and refuses every other, naming it. Tensors come back as numpy arrays in their own dtypes.
Both of torch.save's formats are read: the zip archive (torch >= 1.6) and the older
single-stream ("legacy") format.
"""

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class UnsupportedFile(ValueError):
  """The file is not a PyTorch state_dict that can be read without running its code."""


class _StorageType:
  """Stands for torch.<X>Storage inside the pickle; carries the numpy dtype."""

  def __init__(self, name: str):
    self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


class _TensorRef:
  """A tensor whose storage is read after unpickling (the legacy format)."""

  def __init__(self, storage: "_Storage", offset: int, size: tuple, stride: tuple):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class _Storage:
  def __init__(self, dtype: np.dtype, data: np.ndarray | None = None):
    self.dtype, self.data = dtype, data


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *_unused):
  return _TensorRef(storage, offset, tuple(size), tuple(stride))


def _materialise(ref: _TensorRef) -> np.ndarray:
  flat = ref.storage.data
  item = flat.dtype.itemsize
  needed = ref.offset + 1 + sum((n - 1) * s for n, s in zip(ref.size, ref.stride)) if all(
      ref.size) else 0
  if needed > flat.size:
    raise UnsupportedFile(f"a tensor of shape {ref.size} reaches past its storage")
  view = np.lib.stride_tricks.as_strided(
      flat[ref.offset:], shape=ref.size, strides=[s * item for s in ref.stride])
  return np.array(view, order="C", copy=True)  # independent of the file's buffer


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only the names of _ALLOWED and torch's storage types."""

  def __init__(self, file: BinaryIO, load_storage):
    super().__init__(file)
    self._load_storage = load_storage

  def find_class(self, module: str, name: str):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise UnsupportedFile(f"it names {module}.{name}, which a state_dict does not need "
                          "(refused: unpickling it could run code)")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise UnsupportedFile(f"unknown persistent id {str(pid)[:80]}")
    return self._load_storage(pid)


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if not pickles:
      raise UnsupportedFile("the archive has no data.pkl")
    prefix = pickles[0][:-len("data.pkl")]
    byteorder = "little"
    if f"{prefix}byteorder" in names:
      byteorder = archive.read(f"{prefix}byteorder").decode().strip()

    def load_storage(pid):
      _, storage_type, key, _location, numel = pid[:5]
      raw = archive.read(f"{prefix}data/{key}")
      dtype = storage_type.dtype.newbyteorder("<" if byteorder == "little" else ">")
      data = np.frombuffer(raw, dtype=dtype, count=numel).astype(storage_type.dtype)
      return _Storage(storage_type.dtype, data)

    return _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), load_storage).load()


def _load_legacy(path: str) -> Any:
  with open(path, "rb") as f:
    plain = lambda: _RestrictedUnpickler(f, None).load()  # noqa: E731
    if plain() != _LEGACY_MAGIC or plain() != _LEGACY_PROTOCOL:
      raise UnsupportedFile("it is neither a zip archive nor a legacy torch.save stream")
    plain()  # sys_info: byte order and type sizes of the writer
    storages: dict[str, _Storage] = {}

    def load_storage(pid):
      _, storage_type, key = pid[:3]
      if key not in storages:
        storages[key] = _Storage(storage_type.dtype)
      return storages[key]

    result = _RestrictedUnpickler(f, load_storage).load()
    for key in plain():  # the storages' keys, in the order their bytes follow
      storage = storages[key]
      (numel,) = struct.unpack("<q", f.read(8))
      raw = f.read(numel * storage.dtype.itemsize)
      if len(raw) != numel * storage.dtype.itemsize:
        raise UnsupportedFile(f"storage {key} is cut short")
      storage.data = np.frombuffer(raw, storage.dtype.newbyteorder("<")).astype(storage.dtype)
    return result


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The {name: array} of a `.pth` state_dict, read without torch and without executing
  pickled code. Raises UnsupportedFile (naming the reason) for anything else."""
  path = os.fspath(path)
  try:
    loaded = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
  except UnsupportedFile:
    raise
  except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, struct.error,
          zipfile.BadZipFile) as e:
    raise UnsupportedFile(f"it cannot be read as a torch.save file ({type(e).__name__}: "
                          f"{str(e)[:80]})") from e
  if isinstance(loaded, dict) and "state_dict" in loaded and isinstance(
      loaded["state_dict"], dict):
    loaded = loaded["state_dict"]
  if not isinstance(loaded, dict):
    raise UnsupportedFile(f"it holds a {type(loaded).__name__}, not a state_dict")
  out = {}
  for key, value in loaded.items():
    if not isinstance(value, _TensorRef):
      raise UnsupportedFile(f"entry {key!r} is a {type(value).__name__}, not a tensor")
    out[key] = _materialise(value)
  return out
