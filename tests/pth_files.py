"""Writes `.pth` files byte by byte, without torch, for the reader's tests: any pickle, any
storage bytes, in either torch.save format, so that a test can say exactly what is wrong."""

import collections
import io
import pickle
import struct
import zipfile

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class Global:
  """Pickles as a reference to module.name (GLOBAL), whatever that name is."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle's save_reduce asks for a callable
    raise AssertionError("never called")


class Call:
  """Pickles as function(*args) (REDUCE)."""

  def __init__(self, function, *args):
    self.function, self.args = function, args

  def __reduce__(self):
    return self.function, self.args


class Pid:
  """Pickles as a persistent id (BINPERSID) holding `value`."""

  def __init__(self, value):
    self.value = value


class _Writer(pickle._Pickler):  # pylint: disable=protected-access  # the Python pickler's dispatch table
  dispatch = pickle._Pickler.dispatch.copy()  # pylint: disable=protected-access

  def _save_global(self, obj: Global) -> None:
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
    self.memoize(obj)

  dispatch[Global] = _save_global

  def persistent_id(self, obj):
    return obj.value if isinstance(obj, Pid) else None


def dumps(obj, protocol: int = 2) -> bytes:
  out = io.BytesIO()
  _Writer(out, protocol).dump(obj)
  return out.getvalue()


def storage_pid(key: str, numel: int, dtype: str = "FloatStorage", legacy: bool = False,
                view=None) -> Pid:
  pid = ("storage", Global("torch", dtype), key, "cpu", numel)
  return Pid(pid + (view,) if legacy else pid)


def tensor(storage: Pid, size: tuple, stride: tuple, offset: int = 0) -> Call:
  return Call(Global("torch._utils", "_rebuild_tensor_v2"), storage, offset, size, stride, False,
              Call(Global("collections", "OrderedDict")))


def state_pickle(tensors: dict) -> bytes:
  return dumps(collections.OrderedDict(tensors))


def write_zip(path, data_pkl: bytes, storages: dict[str, bytes],
              compression: int = zipfile.ZIP_STORED, byteorder: bytes = b"little") -> None:
  with zipfile.ZipFile(path, "w", compression) as archive:
    archive.writestr("archive/data.pkl", data_pkl)
    archive.writestr("archive/byteorder", byteorder)
    archive.writestr("archive/version", b"3\n")
    for key, data in storages.items():
      archive.writestr(f"archive/data/{key}", data)


def write_legacy(path, body_pkl: bytes, keys: list, storages: list[tuple[int, bytes]],
                 keys_pkl: bytes | None = None) -> None:
  """magic, protocol, sys_info, body_pkl, the keys, then (numel header, bytes) per storage."""
  sys_info = {"protocol_version": 1001, "little_endian": True,
              "type_sizes": {"short": 2, "int": 4, "long": 4}}
  parts = [pickle.dumps(LEGACY_MAGIC, 2), pickle.dumps(1001, 2), pickle.dumps(sys_info, 2),
           body_pkl, keys_pkl if keys_pkl is not None else pickle.dumps(keys, 2)]
  parts += [struct.pack("<q", numel) + data for numel, data in storages]
  with open(path, "wb") as f:
    f.write(b"".join(parts))
