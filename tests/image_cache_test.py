"""The decoded-image cache: hit, rebuild on change, cut-off builds, bad items."""

import json
import os

import numpy as np
import pytest

from dcgan_jax import image_cache
from dcgan_jax.decode import DecodeError
from dcgan_jax.errors import UsageError


class CountingLoader:
  """Items are ints; image i is filled with i; items listed in `bad` fail."""

  def __init__(self, bad=(), size=4):
    self.calls, self.bad, self.size = 0, set(bad), size

  def __call__(self, item):
    self.calls += 1
    if item in self.bad:
      raise DecodeError(f"item{item}.jpg: broken")
    return np.full((self.size, self.size, 1), item, np.uint8)


def build(tmp_path, loader, items=range(10), description=None, strict=False):
  return image_cache.load_or_build(str(tmp_path), "t", description or {"v": 1}, list(items),
                                   loader, 4, 1, strict=strict, num_workers=2)


def test_build_then_hit(tmp_path):
  loader = CountingLoader()
  first = build(tmp_path, loader)
  assert first.built and loader.calls == 10
  np.testing.assert_array_equal(first.images[:, 0, 0, 0], np.arange(10))
  second = build(tmp_path, loader)
  assert not second.built and loader.calls == 10  # nothing decoded again
  assert second.path == first.path and isinstance(second.images, np.memmap)
  np.testing.assert_array_equal(second.images, first.images)


def test_rebuilt_when_the_key_changes(tmp_path):
  loader = CountingLoader()
  a = build(tmp_path, loader)
  b = build(tmp_path, loader, description={"v": 2})
  c = build(tmp_path, loader, items=range(5), description={"v": 2, "n": 5})
  assert b.built and c.built and len({a.path, b.path, c.path}) == 3
  assert loader.calls == 25
  d = image_cache.load_or_build(str(tmp_path), "t", {"v": 1}, list(range(10)),
                                CountingLoader(size=8), 8, 1)
  assert d.built and d.images.shape == (10, 8, 8, 1) and d.path != a.path


@pytest.mark.parametrize("damage", ["no_marker", "truncated_array", "marker_of_other_key"])
def test_cut_off_or_damaged_cache_is_rebuilt_never_read(tmp_path, damage):
  loader = CountingLoader()
  first = build(tmp_path, loader)
  meta_path = first.path[:-4] + ".json"
  if damage == "no_marker":
    os.remove(meta_path)
  elif damage == "truncated_array":
    with open(first.path, "r+b") as f:
      f.truncate(os.path.getsize(first.path) - 16)
  else:
    meta = json.load(open(meta_path))
    meta["key"] = "0" * 20
    json.dump(meta, open(meta_path, "w"))
  del first
  again = build(tmp_path, loader)
  assert again.built and loader.calls == 20
  np.testing.assert_array_equal(again.images[:, 0, 0, 0], np.arange(10))


def test_unreadable_items_are_skipped_and_reported(tmp_path):
  cached = build(tmp_path, CountingLoader(bad={3, 7}))
  np.testing.assert_array_equal(cached.images[:, 0, 0, 0], [0, 1, 2, 4, 5, 6, 8, 9])
  assert cached.skipped == ["item3.jpg: broken", "item7.jpg: broken"]
  reused = build(tmp_path, CountingLoader(bad={3, 7}))
  assert not reused.built and reused.skipped == cached.skipped and len(reused.images) == 8


def test_strict_stops_on_the_first_unreadable_item(tmp_path):
  with pytest.raises(UsageError, match="item3.jpg: broken .1 unreadable of 10"):
    build(tmp_path, CountingLoader(bad={3}), strict=True)
  assert [p for p in os.listdir(tmp_path)] == []  # no partial files left behind


def test_worker_processes_build_the_same_cache_as_threads(tmp_path):
  from conftest import make_image_folder  # pylint: disable=g-import-not-at-top
  from dcgan_jax import input_pipeline  # pylint: disable=g-import-not-at-top

  make_image_folder(tmp_path / "images", count=6, size=(40, 48))
  (tmp_path / "images" / "bad.jpg").write_text("not a jpeg")
  source = input_pipeline.folder_source(str(tmp_path / "images"), 32, 3)
  built = {}
  for processes in (False, True):
    built[processes] = image_cache.load_or_build(
        str(tmp_path / f"cache{processes}"), source.name, source.description, source.items,
        source.load, 32, 3, num_workers=2, processes=processes)
  np.testing.assert_array_equal(built[True].images, built[False].images)
  assert built[True].images.shape == (6, 32, 32, 3)
  assert len(built[True].skipped) == 1 and "bad.jpg" in built[True].skipped[0]
