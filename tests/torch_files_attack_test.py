"""Crafted `.pth` files against the reader, each through `python -m dcgan_jax.convert import`
(run as `-m` runs it, one file after another in one interpreter) under a memory limit: exit
status 2, one line naming the problem, nothing written, bounded peak memory. Code-running
pickles in every opcode form, look-alike names, tensors outside their storage, expansion,
decompression and pickle bombs, truncated and corrupted files."""

import copyreg
import json
import os
import pathlib
import pickle
import re
import struct
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import pytest

import pth_files as P
from dcgan_jax import torch_files

ROOT = pathlib.Path(__file__).resolve().parent.parent
MEMORY_LIMIT = 1 << 30  # address space of the importing process
PEAK_RSS_LIMIT = 300 << 20  # what a refusal may cost, resident

ONE_FLOAT = np.float32(1.5).tobytes()
RUN = "echo this must not run"


# ---------------------------------------------------------------------------------------
# Pickles that would run code, by opcode form; each is the whole data.pkl of a zip file.
CODE = {
    "global_reduce": (b"\x80\x02cos\nsystem\nX\x16\x00\x00\x00" + RUN.encode() + b"\x85R.",
                      r"names os\.system"),
    "stack_global": (b"\x80\x04X\x05\x00\x00\x00posixX\x06\x00\x00\x00system\x93X\x16\x00"
                     b"\x00\x00" + RUN.encode() + b"\x85R.", r"opcode STACK_GLOBAL"),
    "inst": (b"(ios\nsystem\n.", r"opcode INST"),
    "obj": (b"(cos\nsystem\no.", r"opcode OBJ"),
    "newobj": (b"\x80\x02cbuiltins\ndict\n)\x81.", r"opcode NEWOBJ"),
    "newobj_on_allowed": (b"\x80\x02ccollections\nOrderedDict\n)\x81.", r"opcode NEWOBJ"),
    "newobj_ex": (b"\x80\x04cbuiltins\neval\n)}\x92.", r"opcode NEWOBJ_EX"),
    "ext1": (b"\x80\x02\x82\x01)R.", r"opcode EXT1"),
    "build_on_rebuild": (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}X\x08\x00\x00\x00"
                         b"__call__K\x01sb.", r"sets the state of a Callable"),
    "build_slots_on_storage_type": (b"\x80\x02ctorch\nFloatStorage\nN}X\x05\x00\x00\x00dtype"
                                    b"X\x01\x00\x00\x00Os\x86b.",
                                    r"sets the state of a StorageType"),
    "build_on_ordered_dict_class": (b"\x80\x02ccollections\nOrderedDict\n}X\x04\x00\x00\x00"
                                    b"keysK\x01sb.", r"sets the state of a Callable"),
    "ordered_dict_with_arguments": (b"\x80\x02ccollections\nOrderedDict\n]K\x01a\x85R.",
                                    r"calls OrderedDict with arguments"),
    "text_persistent_id": (b"Pstorage\n.", r"opcode PERSID"),
    "memo_index_2_32": (b"\x80\x02K\x01r\xff\xff\xff\xff.", r"memo index 4294967295 of 0"),
    "frame_of_2_60_bytes": (b"\x80\x04\x95" + (2**60).to_bytes(8, "little") + b"K\x01.",
                            r"opcode FRAME"),
    "bytes8_of_2_40": (b"\x80\x04\x8e" + (2**40).to_bytes(8, "little") + b"ab.",
                       r"opcode BINBYTES8"),
    "unicode_of_2_31": (b"\x80\x02X\x00\x00\x00\x80ab.",
                        r"argument declares 2147483648 bytes, more than remain"),
    "memo_read_never_stored": (b"\x80\x02h\x05.", r"reads what it never stored"),
}
LOOKALIKES = [("torch._utils", "_rebuild_tensor_v2.__globals__"),
              ("collections", "OrderedDict.fromkeys"), ("torch", "FloatStorage.from_file"),
              ("torch._utils ", "_rebuild_tensor_v2"), ("torch._utils.os", "system"),
              ("__builtin__", "eval"), ("builtins", "getattr"), ("torch", "load"),
              ("numpy", "frombuffer"), ("torch", "Tensor")]


def _nested_pid(depth: int) -> bytes:
  """A persistent id nested `depth` tuples deep."""
  return b"\x80\x02)" + b"\x85" * depth + b"Q."


def _nested_dict_key(depth: int) -> bytes:
  """A dict whose key is a tuple nested `depth` deep (hashing it overflowed the C stack)."""
  return b"\x80\x02}" + b")" + b"\x85" * depth + b"K\x01s."


def _zip_tensors(tensors: dict, storages: dict[str, bytes], **kw):
  return lambda path: P.write_zip(path, P.state_pickle(tensors), storages, **kw)


def _one(size, stride, offset=0, numel=1, data=ONE_FLOAT):
  return _zip_tensors({"main.0.weight": P.tensor(P.storage_pid("0", numel), size, stride,
                                                 offset)}, {"0": data})


def _legacy(size, stride, numel=1, header=None, keys=("0",), data=ONE_FLOAT, offset=0):
  body = P.state_pickle({"w": P.tensor(P.storage_pid("0", numel, legacy=True), size, stride,
                                       offset)})
  return lambda path: P.write_legacy(path, body, list(keys),
                                     [(numel if header is None else header, data)])


def _bomb(path, declared: int, actual: int) -> None:
  """A deflated storage member of `actual` zero bytes, declared as `declared` float32s."""
  pkl = P.state_pickle({"w": P.tensor(P.storage_pid("0", declared), (declared,), (1,))})
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
    archive.writestr("archive/data.pkl", pkl)
    archive.writestr("archive/byteorder", b"little")
    with archive.open("archive/data/0", "w", force_zip64=True) as member:
      for _ in range(actual // (1 << 24)):
        member.write(bytes(1 << 24))


def _pickle_bomb(path) -> None:
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
    with archive.open("archive/data.pkl", "w", force_zip64=True) as member:
      for _ in range(5):
        member.write(bytes(16 << 20))


def _shared(path, count: int) -> None:
  """`count` tensors of 2**20 elements, all on one storage (4 MiB of deflated zeros)."""
  pid = P.storage_pid("0", 1 << 20)
  tensors = {f"t{i}": P.tensor(pid, (1 << 20,), (1,)) for i in range(count)}
  P.write_zip(path, P.state_pickle(tensors), {"0": bytes(4 << 20)}, zipfile.ZIP_DEFLATED)


def _raw_zip(pkl: bytes):
  return lambda path: P.write_zip(path, pkl, {})


CRAFTED = {  # name: (writer(path), what the one line must say)
    **{f"code_{k}": (_raw_zip(v[0]), v[1]) for k, v in CODE.items()},
    **{f"lookalike_{i}": (_raw_zip(P.dumps(P.Call(P.Global(m, n)))), r"names .*refused")
       for i, (m, n) in enumerate(LOOKALIKES)},
    "pid_nested_200000": (_raw_zip(_nested_pid(200_000)), r"nests tuples more than 10000 deep"),
    "dict_key_nested_200000": (_raw_zip(_nested_dict_key(200_000)),
                               r"nests tuples more than 10000 deep"),
    "negative_stride_reads_4096": (_one((4096,), (-1,), offset=0),
                                   r"'main\.0\.weight'.*negative"),
    "negative_stride_in_bounds": (_one((2,), (-1,), offset=1, numel=2, data=bytes(8)),
                                  r"negative size, stride or offset"),
    "stride_minus_10_12": (_one((2,), (-10**12,)), r"negative"),
    "negative_offset": (_one((1,), (1,), offset=-4096), r"negative size, stride or offset"),
    "past_the_end": (_one((4,), (1,), offset=1, numel=4, data=bytes(16)),
                     r"reaches past its storage of 4 elements"),
    "huge_stride": (_one((2,), (10**12,), numel=2, data=bytes(8)), r"reaches past"),
    "overlapping": (_one((3, 3), (1, 1), numel=5, data=bytes(20)),
                    r"more elements than its storage \(5\)"),
    "stride_0_bomb": (_one((30000, 25000), (0, 0)), r"more elements than its storage \(1\)"),
    "dims_65": (_legacy((1,) * 65, (1,) * 65), r"65 dimensions"),
    "size_stride_lengths_differ": (_one((1, 1), (1,)), r"2 dimensions and 1 strides"),
    "negative_dimension": (_legacy((-1, 4), (4, 1)), r"negative size"),
    "float_size": (_one((1.0,), (1,)), r"not whole numbers"),
    "bool_stride": (_one((1,), (True,)), r"not whole numbers"),
    "legacy_numel_2_60": (_legacy((1,), (1,), numel=2**60, header=2**60),
                          r"storages declare more than 1,073,741,824 elements"),
    "legacy_header_2_60": (_legacy((1,), (1,), header=2**60),
                           r"holds 1152921504606846976 elements where 1 are declared"),
    "legacy_header_negative": (_legacy((1,), (1,), header=-1), r"holds -1 elements"),
    "legacy_storage_unfilled": (_legacy((1,), (1,), keys=()), r"storage keys do not match"),
    "legacy_cut_short": (_legacy((4,), (1,), numel=4, data=ONE_FLOAT), r"cut short"),
    "legacy_view_past_end": (
        lambda path: P.write_legacy(path, P.state_pickle({"w": P.tensor(P.storage_pid(
            "0", 1, legacy=True, view=("v", 0, 5)), (1,), (1,))}), ["0"], [(1, ONE_FLOAT)]),
        r"view of storage '0' \(0\+5\) reaches past its 1 elements"),
    "zip_bomb_512_MiB": (lambda path: _bomb(path, 4, 512 << 20),
                         r"storage '0' holds 536,870,912 bytes where 16 are declared"),
    "member_smaller_than_declared": (_one((1,), (1,), numel=100),
                                     r"storage '0' holds 4 bytes where 400 are declared"),
    "storage_missing": (_zip_tensors({"w": P.tensor(P.storage_pid("0", 1), (1,), (1,))}, {}),
                        r"storage '0' is missing"),
    "storages_over_limit": (_zip_tensors({f"w{i}": P.tensor(P.storage_pid(str(i), 2**29 + 1),
                                                            (1,), (1,)) for i in range(2)}, {}),
                            r"storages declare more than 1,073,741,824 elements"),
    "tensors_over_limit": (lambda path: _shared(path, 1025),
                           r"tensors hold more than 1,073,741,824 elements"),
    "storage_declared_twice": (_zip_tensors({
        "a": P.tensor(P.storage_pid("0", 1), (1,), (1,)),
        "b": P.tensor(P.storage_pid("0", 2), (1,), (1,))}, {"0": ONE_FLOAT}),
        r"storage '0' is declared twice"),
    "pickle_bomb_80_MiB": (_pickle_bomb, r"data\.pkl is 83,886,080 bytes"),
    "byteorder_junk": (_zip_tensors({"w": P.tensor(P.storage_pid("0", 1), (1,), (1,))},
                                    {"0": ONE_FLOAT}, byteorder=b"\x00middle"),
                       r"byteorder record says"),
    "byteorder_record_of_4_KiB": (_zip_tensors({"w": P.tensor(P.storage_pid("0", 1), (1,), (1,))},
                                               {"0": ONE_FLOAT}, byteorder=b"little" + bytes(4090)),
                                  r"byteorder record is 4,096 bytes"),
    "tensor_on_a_string": (_raw_zip(P.dumps({"w": P.Call(P.Global(
        "torch._utils", "_rebuild_tensor_v2"), "storage", 0, (1,), (1,), False, None)})),
                           r"built on a str, not a storage"),
    "entry_named_by_int": (_zip_tensors({7: P.tensor(P.storage_pid("0", 1), (1,), (1,))},
                                        {"0": ONE_FLOAT}), r"entry named by a int"),
    "not_a_tensor": (_raw_zip(P.dumps({"w": [1, 2]})), r"entry 'w' is a list"),
    "storage_unknown_dtype": (_zip_tensors({"w": P.tensor(P.storage_pid(
        "0", 1, dtype="ComplexFloatStorage"), (1,), (1,))}, {"0": ONE_FLOAT}),
        r"names torch\.ComplexFloatStorage"),
}


_LIMITED = """
import atexit, os, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))

def peak():  # this process's own high-water mark in bytes (getrusage would count the parent's)
  with open("/proc/self/status") as status:
    return int(next(line for line in status if line.startswith("VmHWM")).split()[1]) * 1024

def report_peak():
  with open(os.environ["PEAK_FILE"], "w") as out:
    out.write(str(peak()))

atexit.register(report_peak)
sys.argv = sys.argv[1:]
exec(sys.argv[0])
"""


def _run_limited(code: str, *args: str) -> tuple[int, str, str, int]:
  """(exit status, stdout, stderr, peak RSS in bytes) of Python running code with sys.argv
  [code, *args], under an address space limit of MEMORY_LIMIT."""
  with tempfile.NamedTemporaryFile() as peak:
    out = subprocess.run([sys.executable, "-c", _LIMITED.format(limit=MEMORY_LIMIT), code, *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PEAK_FILE": peak.name})
    return out.returncode, out.stdout, out.stderr, int(pathlib.Path(peak.name).read_text())


# Every file in turn through `python -m dcgan_jax.convert import`, as runpy runs it, in this
# one limited interpreter (_LIMITED's, with its peak()): each file's status, stdout, stderr and
# the peak RSS so far (the high-water mark only grows, so each file's own peak is at most what
# is recorded for it).
_IMPORT_EACH = """
import contextlib, io, json, runpy, sys, traceback
results = {}
for name, net_g, workdir in json.loads(sys.argv[1]):
  out, err = io.StringIO(), io.StringIO()
  sys.argv = ["convert", "import", "--netG", net_g, "--workdir", workdir]
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      runpy.run_module("dcgan_jax.convert", run_name="__main__", alter_sys=True)
      status = 0
    except SystemExit as e:
      status = e.code if isinstance(e.code, int) else 1
    except BaseException:
      status = 1
      traceback.print_exc()
  results[name] = [status, out.getvalue(), err.getvalue(), peak()]
print(json.dumps(results))
"""


def _import_each(files: dict[str, tuple[pathlib.Path, pathlib.Path]]) -> tuple[dict, str]:
  """{name: (exit status, stdout, stderr, peak RSS so far)} of `convert import` of each
  (net_g, workdir), and all that the interpreter printed besides (stdout and stderr)."""
  args = [[name, str(net_g), str(workdir)] for name, (net_g, workdir) in files.items()]
  status, out, err, _ = _run_limited(_IMPORT_EACH, json.dumps(args))
  assert status == 0, err[-3000:]
  return json.loads(out.splitlines()[-1]), out + err


def _genuine_variants(folder: pathlib.Path) -> dict[str, tuple[pathlib.Path, str]]:
  """Truncations and corruptions of a genuine torch.save file, in both formats."""
  torch = pytest.importorskip("torch")
  gen = torch.Generator().manual_seed(0)
  state = {"main.0.weight": torch.randn(8, 4, 4, 4, generator=gen),
           "main.1.running_mean": torch.randn(4, generator=gen)}
  out = {}
  for fmt in ("zip", "legacy"):
    path = folder / f"genuine_{fmt}.pth"
    torch.save(state, path, _use_new_zipfile_serialization=fmt == "zip")
    data = path.read_bytes()
    cut = r"neither a zip archive nor a legacy|malformed|cut short"
    variants = {f"cut_{name}": (data[:n], cut) for name, n in (
        ("0", 0), ("1", 1), ("10", 10), ("half", len(data) // 2), ("last", len(data) - 1))}
    if fmt == "zip":
      with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(next(n for n in archive.namelist() if n.endswith("data/0")))
      name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:
                                                      info.header_offset + 30])
      start = info.header_offset + 30 + name_len + extra_len  # the local header's own lengths
      variants["storage_byte"] = (data[:start + 5] + bytes([data[start + 5] ^ 1])
                                  + data[start + 6:], r"storage .0. fails its CRC-32 check")
      name_at = info.header_offset + 30 + name_len - 1  # the last letter of the member's name
      variants["local_header_name"] = (data[:name_at] + b"9" + data[name_at + 1:],
                                       r"local header names another member")
      variants["local_header_signature"] = (data[:info.header_offset] + b"PK\x07\x08"
                                            + data[info.header_offset + 4:],
                                            r"local header is damaged")
      variants["central_directory"] = (data[:-30] + b"\xff" * 8 + data[-22:],
                                       r"cannot be read")
    else:
      variants["magic"] = (b"\x80\x02\x8a\x0a\x6b" + data[5:], r"neither a zip archive")
      header = data.index(struct.pack("<q", 512))  # the weight storage's element count
      variants["numel_header"] = (data[:header] + struct.pack("<q", 511) + data[header + 8:],
                                  r"holds 511 elements where 512 are declared")
    for name, (content, pattern) in variants.items():
      (folder / f"{fmt}_{name}.pth").write_bytes(content)
      out[f"genuine_{fmt}_{name}"] = (folder / f"{fmt}_{name}.pth", pattern)
  return out


GENUINE_VARIANTS = [f"genuine_{fmt}_{name}" for fmt, names in (
    ("zip", ("cut_0", "cut_1", "cut_10", "cut_half", "cut_last", "storage_byte",
             "local_header_name", "local_header_signature", "central_directory")),
    ("legacy", ("cut_0", "cut_1", "cut_10", "cut_half", "cut_last", "magic", "numel_header")))
                    for name in names]


@pytest.fixture(scope="module")
def crafted(tmp_path_factory) -> dict[str, tuple[pathlib.Path, str]]:
  folder = tmp_path_factory.mktemp("crafted")
  files = {}
  for name, (write, pattern) in CRAFTED.items():
    write(folder / f"{name}.pth")
    files[name] = (folder / f"{name}.pth", pattern)
  try:
    files.update(_genuine_variants(folder))
  except pytest.skip.Exception:
    pass  # without torch, the genuine files' tests skip themselves
  return files


@pytest.fixture(scope="module")
def imports(crafted, tmp_path_factory) -> tuple[dict[str, tuple], str]:
  """Every crafted file through convert import, and all the interpreter printed itself."""
  out_root = tmp_path_factory.mktemp("imports")
  results, printed = _import_each({name: (crafted[name][0], out_root / name)
                                   for name in sorted(crafted)})
  return {name: (*r, out_root / name) for name, r in results.items()}, printed


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CRAFTED) + GENUINE_VARIANTS)
def test_crafted_file_is_refused_in_one_line(name, crafted, imports, capfd):
  imports, printed = imports
  if name not in imports:
    pytest.skip("torch is not installed: no genuine file to truncate")
  status, out, err, peak, workdir = imports[name]
  lines = err.strip().splitlines()
  assert status == 2, err
  assert len(lines) == 1 and lines[0].startswith("error: --netG="), err
  assert "is not a PyTorch state_dict" in lines[0]
  assert re.search(crafted[name][1], lines[0]), lines[0]
  assert "must not run" not in out + err + printed + capfd.readouterr().out
  assert not workdir.exists()  # nothing written
  assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB"


def test_registered_extension_code_is_refused_as_an_opcode(tmp_path):
  """EXT2 names os.system through copyreg's registry; the walk refuses the opcode before the
  unpickler could look it up."""
  copyreg.add_extension("os", "system", 0x7A11)
  try:
    path = tmp_path / "ext.pth"
    P.write_zip(path, b"\x80\x02\x83\x11\x7aX\x04\x00\x00\x00echo\x85R.", {})
    with pytest.raises(torch_files.UnsupportedFile, match=r"opcode EXT2"):
      torch_files.load_state_dict(path)
  finally:
    copyreg.remove_extension("os", "system", 0x7A11)


@pytest.mark.slow
def test_large_storage_read_as_a_stream_under_a_memory_limit(tmp_path):
  """A declared 512 MiB storage whose one tensor uses 4 elements: read as a stream, the rest
  passed through to its declared end and CRC, never held."""
  path = tmp_path / "big.pth"
  pkl = P.state_pickle({"w": P.tensor(P.storage_pid("0", 1 << 27), (2, 2), (2, 1))})
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
    archive.writestr("archive/data.pkl", pkl)
    with archive.open("archive/data/0", "w", force_zip64=True) as member:
      member.write(np.arange(4, dtype=np.float32).tobytes())
      member.write(bytes((1 << 24) - 16))
      for _ in range((1 << 29) // (1 << 24) - 1):
        member.write(bytes(1 << 24))
  code = ("import sys; from dcgan_jax import torch_files; "
          "w = torch_files.load_state_dict(sys.argv[1])['w']; print(w.ravel().tolist())")
  status, out, err, peak = _run_limited(code, str(path))
  assert status == 0, err
  assert out.strip() == "[0.0, 1.0, 2.0, 3.0]"  # of a 512 MiB storage
  assert peak < PEAK_RSS_LIMIT


def test_legacy_storage_view_is_read_at_its_offset(tmp_path):
  path = tmp_path / "view.pth"
  pid = P.storage_pid("0", 6, legacy=True, view=("v", 2, 3))
  P.write_legacy(path, P.state_pickle({"w": P.tensor(pid, (3,), (1,))}), ["0"],
                 [(6, np.arange(6, dtype=np.float32).tobytes())])
  assert torch_files.load_state_dict(path)["w"].tolist() == [2.0, 3.0, 4.0]


def test_overlapping_view_within_its_storage_reads_like_torch(tmp_path):
  """Strides that revisit elements are memory-safe when they stay inside the storage and
  take no more elements than it has; they read as torch reads them."""
  path = tmp_path / "overlap.pth"
  P.write_zip(path, P.state_pickle({"w": P.tensor(P.storage_pid("0", 4), (2, 2), (1, 1))}),
              {"0": np.arange(4, dtype=np.float32).tobytes()})
  assert torch_files.load_state_dict(path)["w"].tolist() == [[0.0, 1.0], [1.0, 2.0]]


def test_many_shallow_tuples_pass(tmp_path):
  """More tuples than MAX_NESTING, none deep: the walk passes them."""
  tensors = {f"t{i}": P.tensor(P.storage_pid("0", 1), (1,), (1,)) for i in range(4000)}
  pkl = P.state_pickle(tensors)
  path = tmp_path / "many.pth"
  P.write_zip(path, pkl, {"0": ONE_FLOAT})
  loaded = torch_files.load_state_dict(path)
  assert len(loaded) == 4000 and loaded["t3999"].tolist() == [1.5]


def test_a_file_of_neither_format_says_so(tmp_path):
  for name, content in (("plain", pickle.dumps({"a": 1})), ("short", b"\x80\x02\x8a"),
                        ("empty", b""), ("text", b"not a checkpoint")):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(torch_files.UnsupportedFile, match="neither a zip archive nor a legacy"):
      torch_files.load_state_dict(tmp_path / name)
