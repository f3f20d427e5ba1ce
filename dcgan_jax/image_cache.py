"""Decode once: preprocessed images in a memory-mapped uint8 .npy file, keyed by what made it.

The key covers the source's description (for a folder: every file's relative path, size and
mtime), the image size, the channel count and the preprocessing version. A cache is used
only when its marker file (.json, written last) names the same key and the array has the
recorded shape; anything else, such as a build that was cut off, is rebuilt.
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import pathlib
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import logging

from dcgan_jax import errors
from dcgan_jax.decode import DecodeError
from dcgan_jax.errors import UsageError

PREPROCESS_VERSION = 1  # bump when preprocessing changes what is stored


@dataclasses.dataclass
class Cached:
  images: np.ndarray  # (N, S, S, C) uint8, memory-mapped read-only
  skipped: list[str]  # "path: reason" of items that could not be decoded
  built: bool  # False when an existing cache was reused
  path: str
  # the indices (into the items) of those skipped, ascending: image i of the cache is item i of
  # the items without them; None for a cache written before it recorded them with some skipped
  dropped: list[int] | None = None


def default_cache_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "dcgan_jax")


def cache_key(description: dict[str, Any], image_size: int, channels: int) -> str:
  blob = json.dumps({"source": description, "image_size": image_size, "channels": channels,
                     "version": PREPROCESS_VERSION}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _read_complete(array_path: str, meta_path: str, key: str):
  """Returns (images, meta) of a finished cache with this key, else None."""
  try:
    with open(meta_path) as f:
      meta = json.load(f)
    if meta.get("key") != key or not meta.get("complete"):
      return None
    images = np.load(array_path, mmap_mode="r")
    if images.shape[0] != meta["count"] or images.dtype != np.uint8:
      return None
    return images, meta
  except (OSError, ValueError, KeyError, json.JSONDecodeError):
    return None  # missing, truncated or unreadable: rebuild


def _write_json(path: str, obj) -> None:
  tmp = f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"
  with errors.writing(path, undo=lambda: os.remove(tmp)):
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=1)
    os.replace(tmp, path)


class _Progress:
  """tqdm on a terminal, a log line every 10% otherwise."""

  def __init__(self, total: int, what: str):
    self.total, self.what, self.done, self._next = total, what, 0, 0.1
    self._bar = None
    if sys.stderr.isatty():
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=total, desc=what, unit="img", dynamic_ncols=True)

  def update(self, n: int = 1) -> None:
    self.done += n
    if self._bar is not None:
      self._bar.update(n)
    elif self.done >= self._next * self.total:
      logging.info("%s: %d/%d", self.what, self.done, self.total)
      self._next += 0.1

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def _decode_chunk(array_path: str, start: int, items: Sequence,
                  load: Callable[[Any], np.ndarray]) -> list[tuple[int, str]]:
  """Decodes items into rows start.. of the .npy file at array_path; returns the failures.

  Module-level so that worker processes can run it; each opens the file itself.
  """
  array = np.load(array_path, mmap_mode="r+")
  failed = []
  for offset, item in enumerate(items):
    try:
      array[start + offset] = load(item)
    except DecodeError as e:
      failed.append((start + offset, str(e)))
  array.flush()
  return failed


def _decode_into(array_path: str, items: Sequence, load: Callable[[Any], np.ndarray],
                 num_workers: int, processes: bool, what: str) -> list[tuple[int, str]]:
  """Fills row i of the .npy file with load(items[i]) on num_workers workers.

  Processes (spawned: JAX's threads make fork unsafe) decode JPEGs on every core, since
  Pillow's decoders hold the GIL; they need picklable items and a module-level `load`.
  """
  chunk = 256
  starts = range(0, len(items), chunk)
  if processes:
    pool = concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=multiprocessing.get_context("spawn"))
  else:
    pool = concurrent.futures.ThreadPoolExecutor(num_workers)
  failures: list[tuple[int, str]] = []
  progress = _Progress(len(items), what)
  with pool:
    futures = {pool.submit(_decode_chunk, array_path, start, items[start:start + chunk], load):
               start for start in starts}
    for future in concurrent.futures.as_completed(futures):
      failures.extend(future.result())
      progress.update(min(chunk, len(items) - futures[future]))
  progress.close()
  return sorted(failures)


def load_or_build(cache_dir: str, name: str, description: dict[str, Any], items: Sequence,
                  load: Callable[[Any], np.ndarray], image_size: int, channels: int,
                  strict: bool = False, num_workers: int | None = None,
                  processes: bool = False) -> Cached:
  """Returns the cached images of `items`, decoding them with `load` (on all cores) if needed.

  Items whose `load` raises DecodeError are skipped, or stop the build when `strict`.
  `processes` decodes in worker processes (items and load must pickle), else threads.
  """
  key = cache_key(description, image_size, channels)
  try:
    pathlib.Path(cache_dir).mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UsageError(f"config.cache_dir={cache_dir!r} cannot be made "
                     f"({e.strerror or type(e).__name__})") from None
  base = os.path.join(cache_dir, f"{name}-{image_size}x{image_size}x{channels}-{key}")
  array_path, meta_path = f"{base}.npy", f"{base}.json"
  found = _read_complete(array_path, meta_path, key)
  if found is not None:
    meta = found[1]
    dropped = meta.get("dropped", [] if not meta["skipped"] else None)
    return Cached(found[0], meta["skipped"], False, array_path, dropped)

  if os.path.exists(meta_path):
    os.remove(meta_path)  # the marker goes first: a cut-off rebuild is never taken as finished
  shape = (len(items), image_size, image_size, channels)
  partial = f"{base}.partial-{socket.gethostname()}-{os.getpid()}.npy"  # one per process
  t0 = time.perf_counter()
  _new_array(partial, shape)
  try:
    failures = _decode_into(partial, items, load, num_workers or os.cpu_count() or 1,
                            processes, f"decoding {name}")
    if failures and strict:
      raise UsageError(f"cannot read image {failures[0][1]} ({len(failures)} unreadable of "
                       f"{len(items)}; set config.strict_data=False to skip them)")
    if failures:
      _drop_rows(partial, {i for i, _ in failures})
    os.replace(partial, array_path)
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  seconds = time.perf_counter() - t0
  skipped = [message for _, message in failures]
  _write_json(meta_path, {"key": key, "complete": True, "count": len(items) - len(failures),
                          "shape": list(shape[1:]), "skipped": skipped,
                          "dropped": [i for i, _ in failures],
                          "seconds": round(seconds, 3), "source": description.get("source")})
  logging.info("decoded %d images of %s in %.1f s (%.0f images/s) into %s",
               len(items), name, seconds, len(items) / max(seconds, 1e-9), array_path)
  return Cached(np.load(array_path, mmap_mode="r"), skipped, True, array_path,
                [i for i, _ in failures])


def _new_array(path: str, shape: tuple[int, ...]) -> np.memmap:
  """A new uint8 .npy file of `shape`, its space reserved on the disk before it is mapped: a full
  disk is a RunError here, where writing into a mapping of a sparse file would kill the process
  (SIGBUS)."""
  with errors.writing(path, undo=lambda: os.remove(path)):
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    array.flush()
    with open(path, "r+b") as f:
      os.posix_fallocate(f.fileno(), 0, os.path.getsize(path))
  return array


def _drop_rows(path: str, bad: set[int]) -> None:
  """Rewrites the .npy file at `path` without the rows in `bad`."""
  array = np.load(path, mmap_mode="r")
  keep = np.array([i for i in range(array.shape[0]) if i not in bad], np.int64)
  compact = _new_array(f"{path}.compact.npy", (len(keep),) + array.shape[1:])
  for start in range(0, len(keep), 4096):
    compact[start:start + 4096] = array[keep[start:start + 4096]]
  compact.flush()
  del array, compact
  os.replace(f"{path}.compact.npy", path)
