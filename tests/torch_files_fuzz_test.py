"""Seeded fuzzing of the .pth reader: genuine small torch.save files, mutated in their bytes,
their pickle opcodes and their storages (zip members re-packed with valid CRCs, so that the
mutations reach the unpickler). Each mutant either reads exactly as torch reads it
(`torch.load(weights_only=True)`) or is refused with UnsupportedFile; never another
exception, a crash, or more than a bounded amount of memory. Where a damaged zip container
is read otherwise by torch's zip reader (miniz) than by Python's zipfile (a zip64 locator's
offset, which zipfile does not use; a central directory entry that miniz follows elsewhere,
where zipfile checks the member's name in its local header and its CRC), the mutant must
read exactly as the unmutated file does."""

import collections
import io
import pickle
import pickletools
import tracemalloc
import zipfile

import numpy as np
import pytest

from dcgan_jax import torch_files

pytestmark = pytest.mark.slow  # reads 1,500 files with the reader and torch

torch = pytest.importorskip("torch")

ITERATIONS = 1500  # about 20 s here
PEAK_BYTES = 32 << 20  # allocations while reading one mutant (the files are a few KB)
INTERESTING = [0, 1, 2, 3, 7, 255, 256, 65535, 2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1, -1,
               -2, -2**31, -2**63]


def _genuine() -> list[tuple[str, bytes]]:
  gen = torch.Generator().manual_seed(0)
  base = torch.arange(24, dtype=torch.float32)
  state = collections.OrderedDict(
      w=torch.randn(4, 3, 2, 2, generator=gen), count=torch.tensor(7),
      transposed=torch.randn(3, 5, generator=gen).t(), half=torch.randn(6, generator=gen).half(),
      bf16=torch.randn(2, generator=gen).bfloat16(), sliced=base[3:9],
      strided=base.view(4, 6)[:, ::2], flag=torch.tensor([True, False]))
  state["shared"] = base.view(2, 12)
  out = []
  for zip_format in (True, False):
    buffer = io.BytesIO()
    torch.save(state, buffer, _use_new_zipfile_serialization=zip_format)
    out.append(("zip" if zip_format else "legacy", buffer.getvalue()))
  return out


def _mutate_pickle(rng: np.random.Generator, data: bytes) -> bytes:
  """One opcode-level change: an integer argument set to an edge value, an opcode deleted,
  duplicated or replaced by another opcode byte, or bytes flipped inside an argument."""
  ops = list(pickletools.genops(data))
  cut = [pos for _, _, pos in ops] + [len(data)]
  i = int(rng.integers(len(ops)))
  start, end = cut[i], cut[i + 1]
  kind = rng.integers(5)
  if kind == 0:
    ints = [j for j, (op, _, _) in enumerate(ops) if op.name in ("BININT1", "BININT2", "BININT",
                                                                 "LONG1")]
    if ints:
      j = ints[int(rng.integers(len(ints)))]
      value = INTERESTING[int(rng.integers(len(INTERESTING)))]
      return data[:cut[j]] + pickle.dumps(value, 2)[2:-1] + data[cut[j + 1]:]
  if kind == 1:
    return data[:start] + data[end:]
  if kind == 2:
    return data[:end] + data[start:end] + data[end:]
  if kind == 3:
    return data[:start] + bytes([int(rng.integers(256))]) + data[start + 1:]
  flips = data[start:end]
  if len(flips) > 1:
    k = int(rng.integers(1, len(flips)))
    flips = flips[:k] + bytes([flips[k] ^ int(rng.integers(1, 256))]) + flips[k + 1:]
  return data[:start] + flips + data[end:]


def _repack(data: bytes, rng: np.random.Generator) -> bytes:
  """A zip .pth with its data.pkl or one storage mutated, re-packed with valid CRCs."""
  with zipfile.ZipFile(io.BytesIO(data)) as archive:
    members = {info.filename: archive.read(info) for info in archive.infolist()}
  names = list(members)
  pkl = next(n for n in names if n.endswith("data.pkl"))
  storages = [n for n in names if "/data/" in n]
  if rng.random() < 0.75:
    members[pkl] = _mutate_pickle(rng, members[pkl])
  else:
    name = storages[int(rng.integers(len(storages)))]
    raw = bytearray(members[name])
    if rng.random() < 0.5 and raw:
      raw[int(rng.integers(len(raw)))] ^= int(rng.integers(1, 256))
    else:
      raw = raw[:int(rng.integers(len(raw) + 1))] if rng.random() < 0.5 else raw + b"\0" * 4
    members[name] = bytes(raw)
  out = io.BytesIO()
  with zipfile.ZipFile(out, "w") as archive:
    for name, content in members.items():
      archive.writestr(name, content)
  return out.getvalue()


def _mutate(rng: np.random.Generator, fmt: str, data: bytes) -> bytes:
  kind = rng.integers(4)
  if kind == 0:  # raw byte flips anywhere
    raw = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
      raw[int(rng.integers(len(raw)))] ^= int(rng.integers(1, 256))
    return bytes(raw)
  if kind == 1:  # cut, or bytes inserted
    at = int(rng.integers(len(data)))
    return data[:at] if rng.random() < 0.5 else data[:at] + rng.bytes(int(rng.integers(1, 9))) + \
        data[at:]
  if fmt == "zip":
    return _repack(data, rng)
  # legacy: the body pickle follows magic, protocol and sys_info
  stream = io.BytesIO(data)
  for _ in range(3):
    pickle.load(stream)
  start = stream.tell()
  end = start + max(pos for _, _, pos in pickletools.genops(data[start:])) + 1
  return data[:start] + _mutate_pickle(rng, data[start:end]) + data[end:]


def _reference(path) -> dict[str, np.ndarray] | None:
  try:
    loaded = torch.load(path, weights_only=True, map_location="cpu")
  except Exception:  # pylint: disable=broad-except  # torch refuses in many ways
    return None
  if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
    return None
  return {k: (v.view(torch.int16).numpy() if v.dtype == torch.bfloat16 else v.numpy())
          for k, v in loaded.items()}


def _same(ours: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> bool:
  """The same names in the same order, each array of the same dtype, shape and bits."""
  if list(ours) != list(reference):
    return False
  for key, array in ours.items():
    if array.dtype.name == "bfloat16":
      array = array.view(np.int16)
    expected = reference[key]
    if (array.dtype != expected.dtype or array.shape != expected.shape
        or array.tobytes() != np.ascontiguousarray(expected).tobytes()):
      return False
  return True


def test_mutants_read_as_torch_reads_them_or_are_refused(tmp_path):
  rng = np.random.default_rng(20261201)
  genuine = _genuine()
  outcomes = collections.Counter()
  path = tmp_path / "mutant.pth"
  originals = {}
  for fmt, data in genuine:
    path.write_bytes(data)
    originals[fmt] = _reference(path)
  tracemalloc.start()
  try:
    for i in range(ITERATIONS):
      fmt, data = genuine[i % len(genuine)]
      path.write_bytes(_mutate(rng, fmt, data))
      tracemalloc.reset_peak()
      try:
        ours = torch_files.load_state_dict(path)
      except torch_files.UnsupportedFile as e:
        assert "MemoryError" not in str(e) and "\n" not in str(e), (i, str(e))
        outcomes["refused"] += 1
        continue
      finally:
        peak = tracemalloc.get_traced_memory()[1]
        assert peak < PEAK_BYTES, (i, peak)
      reference = _reference(path)
      same = reference is not None and _same(ours, reference)
      if not same and fmt == "zip":
        same = _same(ours, originals[fmt])
      assert same, f"mutant {i} ({fmt}) reads otherwise than torch reads it"
      outcomes["read"] += 1
  finally:
    tracemalloc.stop()
  # The fuzzing reaches both ends: most mutants refused, some read (values or shapes changed).
  assert outcomes["read"] > 20 and outcomes["refused"] > ITERATIONS // 2, outcomes
