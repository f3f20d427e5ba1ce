"""Reads PyTorch `.pth` state_dicts into numpy arrays without torch, without running pickled
code, and without trusting any number in the file.

A `.pth` file is a pickle; unpickling it normally imports and calls whatever the file
names, so a crafted file runs arbitrary code. Here the unpickler resolves only the few
names a state_dict needs (OrderedDict, the tensor-rebuild function and the storage types)
and refuses every other, naming it; the objects it hands to the pickle refuse to have their
state set (pickle's BUILD). Both of torch.save's formats are read: the zip archive
(torch >= 1.6) and the older single-stream ("legacy") format.

Every tensor is checked against its storage before any memory is touched, and a file is
refused (UnsupportedFile, one line naming the tensor, storage or limit) unless:
- each tensor has at most MAX_NDIM dimensions, sizes, strides and storage offset >= 0, every
  element it reaches lies inside its storage, and it has no more elements than its storage
  (no broadcast expansion, such as a stride of 0);
- its storages together, and its tensors together, hold at most MAX_ELEMENTS elements;
- a storage's bytes are exactly as many as the file declares (a zip member is read as a
  stream, only as far as its tensors need, and checked to its declared end and CRC);
- each pickle, walked before it is loaded, uses only the opcodes of torch.save's state_dicts
  (those torch's own weights-only loader reads), declares no argument or memo index beyond
  what the file holds, and nests tuples at most MAX_NESTING deep; a zip's data.pkl is at most
  MAX_PICKLE_BYTES.
"""

import collections
import io
import lzma
import math
import mmap
import os
import pickle
import pickletools
import struct
import zipfile
import zlib
from typing import BinaryIO

import ml_dtypes
import numpy as np

# Elements a file may declare, in its storages together and in its tensors together: 2**30
# (4 GiB of float32). A 128 px DCGAN generator at ngf=512 (the widest a config admits) has
# 726 million, its discriminator at ndf=512 713 million, the FID Inception 24 million.
MAX_ELEMENTS = 2**30
MAX_NDIM = 8
MAX_PICKLE_BYTES = 64 * 2**20
MAX_NESTING = 10_000  # tuples in tuples; CPython hashes 100,000 levels without overflowing

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_CHUNK = 1 << 20


class UnsupportedFile(ValueError):
  """The file is not a PyTorch state_dict that can be read safely; the message says why."""


class _Frozen:
  """An object handed to the pickle: it has no attributes the pickle may set."""
  __slots__ = ()

  def __setstate__(self, state):
    raise UnsupportedFile(f"it sets the state of a {type(self).__name__.lstrip('_')} (pickle "
                          "BUILD), which a state_dict never does")


class _StorageType(_Frozen):
  """Stands for torch.<X>Storage inside the pickle; carries the numpy dtype."""
  __slots__ = ("name", "dtype")

  def __init__(self, name: str):
    self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


class _Storage(_Frozen):
  """A storage the pickle refers to: its declared element count; `data` once read. A legacy
  storage view is a window (offset, numel) of a root storage."""
  __slots__ = ("key", "dtype", "numel", "data", "root", "offset")

  def __init__(self, key: str, dtype: np.dtype, numel: int, root: "_Storage | None" = None,
               offset: int = 0):
    self.key, self.dtype, self.numel, self.data = key, dtype, numel, None
    self.root, self.offset = root, offset


class _TensorRef(_Frozen):
  """A tensor as the pickle describes it; its elements are read after unpickling."""
  __slots__ = ("storage", "offset", "size", "stride")

  def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class _Callable(_Frozen):
  """A name the pickle may call (OrderedDict, the tensor-rebuild function)."""
  __slots__ = ("name", "function")

  def __init__(self, name: str, function):
    self.name, self.function = name, function

  def __call__(self, *args):
    return self.function(*args)


def _ordered_dict(*args) -> collections.OrderedDict:
  if args:  # torch.save calls it without arguments, then sets the items
    raise UnsupportedFile("it calls OrderedDict with arguments, which torch.save never does")
  return collections.OrderedDict()


def _is_int(value) -> bool:
  return type(value) is int  # pylint: disable=unidiomatic-typecheck  # not bool, not a subclass


def _rebuild_tensor(storage, offset, size, stride) -> _TensorRef:
  if not isinstance(storage, _Storage):
    raise UnsupportedFile(f"a tensor is built on a {type(storage).__name__}, not a storage")
  if not (_is_int(offset) and type(size) is tuple and type(stride) is tuple  # pylint: disable=unidiomatic-typecheck
          and all(map(_is_int, size)) and all(map(_is_int, stride))):
    raise UnsupportedFile("a tensor's offset, size or stride is not whole numbers")
  return _TensorRef(storage, offset, size, stride)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks,
                       metadata=None) -> _TensorRef:
  ref = _rebuild_tensor(storage, offset, size, stride)
  if type(requires_grad) is not bool or requires_grad and (
      storage.dtype.kind != "f" and storage.dtype != ml_dtypes.bfloat16):  # pylint: disable=unidiomatic-typecheck
    raise UnsupportedFile(f"a tensor's requires_grad is {type(requires_grad).__name__} "
                          f"{requires_grad!r:.20}, for a {storage.dtype} tensor")
  if type(backward_hooks) is not collections.OrderedDict or backward_hooks or metadata:  # pylint: disable=unidiomatic-typecheck
    raise UnsupportedFile("a tensor carries backward hooks or metadata, which a state_dict "
                          "does not")
  return ref


_ALLOWED = {
    ("collections", "OrderedDict"): _Callable("OrderedDict", _ordered_dict),
    ("torch._utils", "_rebuild_tensor_v2"): _Callable("_rebuild_tensor_v2", _rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor"): _Callable("_rebuild_tensor", _rebuild_tensor),
}
_STORAGE_TYPES = {name: _StorageType(name) for name in _STORAGE_DTYPES}


def _short(text: str, limit: int = 80) -> str:
  return text if len(text) <= limit else f"{text[:limit]}..."


class _Declared:
  """The storages a file declares (by key) and the element total they reach."""

  def __init__(self):
    self.storages: dict[str, _Storage] = {}
    self.elements = 0

  def storage(self, key, storage_type, numel) -> _Storage:
    if type(key) is not str or not isinstance(storage_type, _StorageType) or not _is_int(numel):  # pylint: disable=unidiomatic-typecheck
      raise UnsupportedFile("a storage's key, type or size has the wrong type")
    if numel < 0:
      raise UnsupportedFile(f"storage {_short(key)!r} declares {numel} elements")
    known = self.storages.get(key)
    if known is not None:
      if known.dtype != storage_type.dtype or known.numel != numel:
        raise UnsupportedFile(f"storage {_short(key)!r} is declared twice, differently")
      return known
    self.elements += numel
    if self.elements > MAX_ELEMENTS:
      raise UnsupportedFile(f"its storages declare more than {MAX_ELEMENTS:,} elements "
                            "(the reader's limit)")
    self.storages[key] = _Storage(key, storage_type.dtype, numel)
    return self.storages[key]


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only the names of _ALLOWED and torch's storage types."""

  def __init__(self, file: BinaryIO, load_storage=None):
    super().__init__(file)
    self._load_storage = load_storage

  def find_class(self, module: str, name: str):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module == "torch" and name in _STORAGE_TYPES:
      return _STORAGE_TYPES[name]
    raise UnsupportedFile(f"it names {_short(f'{module}.{name}')}, which a state_dict does not "
                          "need (refused: unpickling it could run code)")

  def persistent_load(self, pid):
    if (self._load_storage is None or type(pid) is not tuple or len(pid) < 5  # pylint: disable=unidiomatic-typecheck
        or type(pid[0]) is not str or pid[0] != "storage"):  # pylint: disable=unidiomatic-typecheck
      raise UnsupportedFile("it holds a persistent id that is not a storage")
    return self._load_storage(pid)


# The pickle walk's opcode table: the opcodes of torch.save's state_dicts, which are also the
# ones torch's own weights-only loader reads; for each, what it does to the stack and how its
# argument is laid out (a fixed number of bytes, a length of that many bytes then as many
# bytes, or newline-terminated lines). Every other opcode is refused.
(_UNKNOWN, _PUSH, _PUSH_FIXED, _PUSH_COUNTED, _PUSH_LINES, _TUPLE, _POPS, _PUT, _GET, _MARK,
 _SKIP, _STOP) = range(12)
_KIND = [_UNKNOWN] * 256
_SIZE = [0] * 256
_EFFECT: dict[int, tuple[int | None, bool]] = {}
_OPCODE_NAMES = {op.code.encode("latin-1")[0]: op.name for op in pickletools.opcodes}


def _define(kind: int, opcodes: str, size: int = 0) -> None:
  for op in opcodes.encode("latin-1"):
    _KIND[op], _SIZE[op] = kind, size


_define(_PUSH, "N\x88\x89]}\x8f")  # NONE NEWTRUE NEWFALSE EMPTY_LIST EMPTY_DICT EMPTY_SET
_define(_PUSH_FIXED, "K", 1)  # BININT1
_define(_PUSH_FIXED, "M", 2)  # BININT2
_define(_PUSH_FIXED, "J", 4)  # BININT
_define(_PUSH_FIXED, "G", 8)  # BINFLOAT
_define(_PUSH_COUNTED, "\x8aU", 1)  # LONG1 SHORT_BINSTRING
_define(_PUSH_COUNTED, "X", 4)  # BINUNICODE
_define(_PUSH_LINES, "c", 2)  # GLOBAL module, name
_define(_TUPLE, ")")  # EMPTY_TUPLE
_define(_TUPLE, "\x85", 1)
_define(_TUPLE, "\x86", 2)
_define(_TUPLE, "\x87", 3)
_define(_TUPLE, "t", -1)  # down to the last MARK
_define(_PUT, "q", 1)
_define(_PUT, "r", 4)
_define(_GET, "h", 1)
_define(_GET, "j", 4)
_define(_MARK, "(")
_define(_SKIP, "\x80", 1)  # PROTO
_define(_STOP, ".")
for _op, _effect in (("a", (1, False)), ("e", (None, False)), ("s", (2, False)),
                     ("u", (None, False)), ("R", (2, True)), ("b", (1, False)),
                     ("Q", (1, True))):  # APPEND(S) SETITEM(S) REDUCE BUILD BINPERSID
  _define(_POPS, _op)
  _EFFECT[ord(_op)] = _effect


def _malformed(why: str) -> UnsupportedFile:
  return UnsupportedFile(f"its pickle is malformed ({why})")


def _check_pickle(data: bytes | mmap.mmap, pos: int, size: int) -> None:
  """Walks the pickle that starts at data[pos] (up to its STOP) before the C unpickler loads
  it, simulating its stack. Refuses an opcode that torch.save's state_dicts do not use, an
  argument that declares more bytes than follow, a memo index that skips ahead (the
  unpickler sizes its memo by it), and tuples nested more than MAX_NESTING deep (hashing
  such a tuple, as a dict key, recurses in C without a guard)."""
  stack: list[int] = []  # each item's tuple nesting depth
  marks: list[int] = []
  memo: dict[int, int] = {}
  kinds, sizes, little = _KIND, _SIZE, "little"

  def pop(n: int) -> list[int]:
    """Returns the top n items, or those above the last MARK (n < 0), removed from the stack."""
    if n < 0 and not marks or n >= 0 and len(stack) - n < (marks[-1] if marks else 0):
      raise _malformed("it takes more from the stack than it put there")
    start = marks.pop() if n < 0 else len(stack) - n
    items = stack[start:]
    del stack[start:]
    return items

  try:
    while True:
      op = data[pos]
      pos += 1
      kind = kinds[op]
      if kind == _PUSH:
        stack.append(0)
      elif kind == _PUSH_FIXED:
        pos += sizes[op]
        stack.append(0)
      elif kind == _PUSH_COUNTED:
        n = sizes[op]
        length = int.from_bytes(data[pos:pos + n], little)
        pos += n + length
        if pos > size:
          raise _malformed(f"an argument declares {length} bytes, more than remain")
        stack.append(0)
      elif kind == _PUT:
        n = sizes[op]
        index = int.from_bytes(data[pos:pos + n], little)
        pos += n
        if index > len(memo):
          raise UnsupportedFile(f"its pickle stores at memo index {index} of {len(memo)}")
        memo[index] = stack[-1]
      elif kind == _GET:
        n = sizes[op]
        stack.append(memo[int.from_bytes(data[pos:pos + n], little)])
        pos += n
      elif kind == _TUPLE:
        depth = 1 + max(pop(sizes[op]), default=0)
        if depth > MAX_NESTING:
          raise UnsupportedFile(f"its pickle nests tuples more than {MAX_NESTING} deep")
        stack.append(depth)
      elif kind == _POPS:
        count, push = _EFFECT[op]
        pop(-1 if count is None else count)
        if push:
          stack.append(0)
      elif kind == _MARK:
        marks.append(len(stack))
      elif kind == _PUSH_LINES:
        for _ in range(sizes[op]):
          end = data.find(b"\n", pos, size)
          if end < 0:
            raise _malformed("a line argument is cut short")
          pos = end + 1
        stack.append(0)
      elif kind == _SKIP:
        pos += sizes[op]
      elif kind == _STOP:
        if pos > size:
          raise _malformed("an argument is cut short")
        return
      else:
        raise UnsupportedFile(f"its pickle uses opcode {_OPCODE_NAMES.get(op, hex(op))}, which "
                              "torch.save's state_dicts do not (refused)")
  except (IndexError, KeyError):
    raise _malformed("it ends early, or reads what it never stored") from None


def _member(archive: zipfile.ZipFile, name: str, size: int, what: str) -> zipfile.ZipInfo:
  """Returns the member's entry, if it is not encrypted and its header says it holds `size`
  bytes."""
  info = archive.getinfo(name)
  if info.flag_bits & 0x1:
    raise UnsupportedFile(f"{what} is encrypted")
  if info.file_size != size:
    raise UnsupportedFile(f"{what} holds {info.file_size:,} bytes where {size:,} are declared")
  return info


def _read_member(archive: zipfile.ZipFile, name: str, size: int, needed: int,
                 what: str) -> bytes:
  """Returns the first `needed` bytes of a member that must hold exactly `size` bytes, read as a
  stream; the rest is read through (never kept) to check its length and CRC."""
  with archive.open(_member(archive, name, size, what)) as member:
    head = member.read(needed)
    rest = 0
    while chunk := member.read(min(_CHUNK, size + 1 - needed - rest)):
      rest += len(chunk)
      if needed + rest > size:
        break
  if len(head) != needed or needed + rest != size:
    raise UnsupportedFile(f"{what} holds {len(head) + rest:,} bytes where {size:,} are declared")
  return head


def _load_zip(path: str) -> dict[str, np.ndarray]:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if not pickles:
      raise UnsupportedFile("the archive has no data.pkl")
    prefix = pickles[0][:-len("data.pkl")]
    byteorder = "little"
    if f"{prefix}byteorder" in names:
      size = archive.getinfo(f"{prefix}byteorder").file_size
      if size > 16:  # 'little' or 'big', perhaps with a newline
        raise UnsupportedFile(f"its byteorder record is {size:,} bytes")
      byteorder = _read_member(archive, f"{prefix}byteorder", size, size,
                               "the byteorder record").decode("ascii", "replace").strip()
      if byteorder not in ("little", "big"):
        raise UnsupportedFile(f"its byteorder record says {byteorder!r}")
    info = archive.getinfo(pickles[0])
    if info.file_size > MAX_PICKLE_BYTES:
      raise UnsupportedFile(f"its data.pkl is {info.file_size:,} bytes (at most "
                            f"{MAX_PICKLE_BYTES:,})")
    data = _read_member(archive, pickles[0], info.file_size, info.file_size, "data.pkl")
    _check_pickle(data, 0, len(data))
    declared = _Declared()

    def load_storage(pid):
      if len(pid) != 5:
        raise UnsupportedFile("a storage's persistent id is not of the zip format")
      _, storage_type, key, _location, numel = pid
      return declared.storage(key, storage_type, numel)

    refs = _tensors(_RestrictedUnpickler(io.BytesIO(data), load_storage).load())
    needed = _check_tensors(refs)
    order = "<" if byteorder == "little" else ">"
    with open(path, "rb") as raw_file:  # torch.save's uncompressed members are read from it
      file_size = os.fstat(raw_file.fileno()).st_size
      for storage in {id(r.storage): r.storage for r in refs.values()}.values():
        name, what = f"{prefix}data/{storage.key}", f"storage {_short(storage.key)!r}"
        if name not in archive.NameToInfo:
          raise UnsupportedFile(f"{what} is missing from the archive")
        item, dtype = storage.dtype.itemsize, storage.dtype.newbyteorder(order)
        size, reach = storage.numel * item, needed[id(storage)] * item
        info = _member(archive, name, size, what)
        if info.compress_type == zipfile.ZIP_STORED and reach == size:
          storage.data = _read_stored(raw_file, file_size, info, dtype, what)
        else:
          storage.data = np.frombuffer(_read_member(archive, name, size, reach, what), dtype)
  return _arrays(refs)


def _read_stored(f: BinaryIO, file_size: int, info: zipfile.ZipInfo, dtype: np.dtype,
                 what: str) -> np.ndarray:
  """Returns an uncompressed member (as torch.save writes them), its size checked by _member, read
  from the archive's file f straight into an array of its own and checked against its local
  header and CRC."""
  size = info.file_size
  if info.compress_size != size:
    raise UnsupportedFile(f"{what} is stored in {info.compress_size:,} bytes, not {size:,}")
  f.seek(info.header_offset)
  header = f.read(30)
  if len(header) != 30 or header[:4] != b"PK\x03\x04":
    raise UnsupportedFile(f"{what}: its local header is damaged")
  name_length, extra_length = struct.unpack("<HH", header[26:30])
  if f.read(name_length) != info.orig_filename.encode("utf-8"):
    raise UnsupportedFile(f"{what}: its local header names another member")
  f.seek(extra_length, os.SEEK_CUR)
  if size > file_size - f.tell():
    raise UnsupportedFile(f"{what} is cut short")
  data = np.empty(size // dtype.itemsize, dtype)
  if f.readinto(data.view(np.uint8)) != size:
    raise UnsupportedFile(f"{what} is cut short")
  if zlib.crc32(data.view(np.uint8)) != info.CRC:
    raise UnsupportedFile(f"{what} fails its CRC-32 check")
  return data


def _legacy_storage(declared: _Declared, pid) -> _Storage:
  if len(pid) != 6:
    raise UnsupportedFile("a storage's persistent id is not of the legacy format")
  _, storage_type, key, _location, numel, view = pid
  root = declared.storage(key, storage_type, numel)
  if view is None:
    return root
  if (type(view) is not tuple or len(view) != 3 or type(view[0]) is not str  # pylint: disable=unidiomatic-typecheck
      or not _is_int(view[1]) or not _is_int(view[2])):
    raise UnsupportedFile(f"storage {_short(key)!r} has a malformed view")
  view_key, offset, size = view
  if offset < 0 or size < 0 or offset + size > numel:
    raise UnsupportedFile(f"a view of storage {_short(key)!r} ({offset}+{size}) reaches "
                          f"past its {numel} elements")
  known = declared.storages.get(view_key)
  if known is None:
    known = declared.storages[view_key] = _Storage(view_key, root.dtype, size, root, offset)
  elif known.root is not root or known.offset != offset or known.numel != size:
    raise UnsupportedFile(f"storage view {_short(view_key)!r} is declared twice, differently")
  return known


def _load_legacy(path: str) -> dict[str, np.ndarray]:
  with open(path, "rb") as f:
    file_size = os.fstat(f.fileno()).st_size
    if not file_size:
      raise UnsupportedFile("it is neither a zip archive nor a legacy torch.save stream (it is "
                            "empty)")
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:  # what the walks read
      return _read_legacy(f, mapped, file_size)


def _read_legacy(f: BinaryIO, mapped: mmap.mmap, file_size: int) -> dict[str, np.ndarray]:
  """Reads the magic number, protocol, sys_info, the state_dict, the storage keys, then each
  storage's element count and bytes."""

  def load(load_storage=None):
    _check_pickle(mapped, f.tell(), file_size)
    return _RestrictedUnpickler(f, load_storage).load()

  try:
    magic, protocol = load(), load()
  except (UnsupportedFile, *_READ_ERRORS):
    magic = protocol = None
  if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL:
    raise UnsupportedFile("it is neither a zip archive nor a legacy torch.save stream")
  sys_info = load()
  little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
  declared = _Declared()
  refs = _tensors(load(lambda pid: _legacy_storage(declared, pid)))
  keys = load()  # the storages' keys, in the order their bytes follow
  if type(keys) is not list or not all(type(k) is str for k in keys):  # pylint: disable=unidiomatic-typecheck
    raise UnsupportedFile("its list of storage keys is malformed")
  roots = {k: s for k, s in declared.storages.items() if s.root is None}
  if len(keys) != len(roots) or set(keys) != set(roots):
    raise UnsupportedFile("its storage keys do not match the storages its tensors use")
  _check_tensors(refs)
  for key in keys:
    storage = roots[key]
    (numel,) = struct.unpack("<q", f.read(8))
    if numel != storage.numel:
      raise UnsupportedFile(f"storage {_short(key)!r} holds {numel} elements where "
                            f"{storage.numel} are declared")
    nbytes = numel * storage.dtype.itemsize
    if nbytes > file_size - f.tell():
      raise UnsupportedFile(f"storage {_short(key)!r} is cut short")
    storage.data = np.empty(numel, storage.dtype.newbyteorder("<" if little else ">"))
    if f.readinto(storage.data.view(np.uint8)) != nbytes:
      raise UnsupportedFile(f"storage {_short(key)!r} is cut short")
  for storage in declared.storages.values():
    if storage.root is not None:
      storage.data = storage.root.data[storage.offset:storage.offset + storage.numel]
  return _arrays(refs)


def _tensors(loaded) -> dict[str, _TensorRef]:
  """Returns the state_dict's tensors, by name (a {'state_dict': ...} wrapper is opened)."""
  if isinstance(loaded, dict) and all(type(k) is str for k in loaded) and isinstance(  # pylint: disable=unidiomatic-typecheck
      loaded.get("state_dict"), dict):
    loaded = loaded["state_dict"]
  if not isinstance(loaded, dict):
    raise UnsupportedFile(f"it holds a {type(loaded).__name__}, not a state_dict")
  for key, value in loaded.items():
    if type(key) is not str:  # pylint: disable=unidiomatic-typecheck
      raise UnsupportedFile(f"it has an entry named by a {type(key).__name__}, not a string")
    if not isinstance(value, _TensorRef):
      raise UnsupportedFile(f"entry {_short(key)!r} is a {type(value).__name__}, not a tensor")
  return loaded


def _check_tensor(key: str, ref: _TensorRef) -> tuple[int, int]:
  """Returns (elements, elements of its storage it reaches) of a tensor that lies inside its
  storage."""
  size, stride, offset, numel = ref.size, ref.stride, ref.offset, ref.storage.numel
  if len(size) > MAX_NDIM or len(stride) != len(size):
    raise UnsupportedFile(f"tensor {key!r} has {len(size)} dimensions and {len(stride)} "
                          f"strides (at most {MAX_NDIM} dimensions)")
  if min(size, default=0) < 0 or min(stride, default=0) < 0 or offset < 0:
    raise UnsupportedFile(f"tensor {key!r} has a negative size, stride or offset "
                          f"(size {size}, stride {stride}, offset {offset})")
  elements = math.prod(size)
  if elements > numel:
    raise UnsupportedFile(f"tensor {key!r} of shape {size} has more elements than its "
                          f"storage ({numel})")
  reach = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride)) if elements else offset
  if reach > numel:
    raise UnsupportedFile(f"tensor {key!r} of shape {size} (stride {stride}, offset {offset}) "
                          f"reaches past its storage of {numel} elements")
  return elements, reach


def _check_tensors(refs: dict[str, _TensorRef]) -> dict[int, int]:
  """Returns {id(storage): elements its tensors reach} once every tensor is checked, and their
  total."""
  total, needed = 0, {}
  for key, ref in refs.items():
    elements, reach = _check_tensor(_short(key), ref)
    total += elements
    if total > MAX_ELEMENTS:
      raise UnsupportedFile(f"its tensors hold more than {MAX_ELEMENTS:,} elements (the "
                            "reader's limit)")
    needed[id(ref.storage)] = max(needed.get(id(ref.storage), 0), reach)
  return needed


def _arrays(refs: dict[str, _TensorRef]) -> dict[str, np.ndarray]:
  """Returns each tensor as a C-contiguous array of its own, in the storage's native dtype: the
  storage's own array where the tensor is all of it, in order, and alone on it; else a copy."""
  users = collections.Counter(id(ref.storage) for ref in refs.values())
  out = {}
  for key, ref in refs.items():
    flat, item = ref.storage.data, ref.storage.dtype.itemsize
    if (users[id(ref.storage)] == 1 and flat.flags.writeable and flat.flags.owndata
        and flat.dtype == ref.storage.dtype and ref.offset == 0
        and math.prod(ref.size) == flat.size and ref.stride == _contiguous(ref.size)):
      out[key] = flat.reshape(ref.size)
      continue
    view = np.lib.stride_tricks.as_strided(flat[ref.offset:], shape=ref.size, writeable=False,
                                           strides=[s * item for s in ref.stride])
    out[key] = np.array(view, dtype=ref.storage.dtype, order="C", copy=True)
  return out


def _contiguous(size: tuple[int, ...]) -> tuple[int, ...]:
  """Returns the strides (in elements) of a C-contiguous tensor of this size, as torch writes
  them."""
  strides, step = [], 1
  for n in reversed(size):
    strides.append(step)
    step *= max(n, 1)
  return tuple(reversed(strides))


_READ_ERRORS = (pickle.UnpicklingError, EOFError, KeyError, IndexError, ValueError, TypeError,
                AttributeError, OverflowError, struct.error, zipfile.BadZipFile,
                NotImplementedError, zlib.error, lzma.LZMAError, OSError, RecursionError,
                MemoryError)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Returns the {name: array} of a `.pth` state_dict, read without torch and without executing
  pickled code. Raises UnsupportedFile (naming the reason) for anything else."""
  path = os.fspath(path)
  try:
    return _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
  except UnsupportedFile:
    raise
  except _READ_ERRORS as e:
    detail = str(e).splitlines()[0] if str(e) else ""
    raise UnsupportedFile(f"it cannot be read as a torch.save file ({type(e).__name__}: "
                          f"{_short(detail)})") from None
