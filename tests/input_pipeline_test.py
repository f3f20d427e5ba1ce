"""Sources, preprocessing, errors and the seeded batch order."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import default
from dcgan_jax import input_pipeline
from dcgan_jax.errors import UsageError
from conftest import make_image_folder


def test_preprocess_resizes_shorter_side_and_center_crops():
  pixels = np.zeros((20, 40), np.uint8)  # 40 wide, 20 high
  pixels[:, 20:] = 255  # right half white
  out = input_pipeline.preprocess(Image.fromarray(pixels), 10, 1)
  assert out.shape == (10, 10, 1) and out.dtype == np.uint8
  # The crop keeps original columns 10..29: its left half is black, its right half white.
  assert out[:, :4].max() == 0 and out[:, 6:].min() == 255


def test_preprocess_converts_channels():
  rgba = Image.fromarray(np.full((8, 8, 4), 200, np.uint8), "RGBA")
  assert input_pipeline.preprocess(rgba, 8, 3).shape == (8, 8, 3)
  gray = Image.fromarray(np.full((8, 8), 77, np.uint8))
  rgb = input_pipeline.preprocess(gray, 8, 3)
  assert rgb.shape == (8, 8, 3) and np.all(rgb == 77)
  red = Image.fromarray(np.dstack([np.full((8, 8), 255, np.uint8)] + [np.zeros((8, 8), np.uint8)] * 2))
  assert np.all(input_pipeline.preprocess(red, 8, 1) == 76)  # ITU-R 601 luma of pure red


def test_embedded_mnist():
  images = input_pipeline.load_embedded_mnist(32, 1)
  assert images.shape == (5000, 32, 32, 1) and images.dtype == np.uint8
  # Digits: dark background, bright strokes, borders empty after the 28 -> 32 resize.
  assert images.max() == 255 and images[:, 0, :].mean() < 1 and 20 < images.mean() < 60


def test_image_folder_reads_nested_mixed_files(tmp_path):
  make_image_folder(tmp_path, count=6)
  (tmp_path / "notes.txt").write_text("not an image")
  Image.fromarray(np.zeros((30, 50), np.uint8)).save(tmp_path / "GRAY.PNG")
  Image.fromarray(np.zeros((30, 30, 4), np.uint8), "RGBA").save(tmp_path / "a" / "rgba.png")
  images = input_pipeline.load_image_folder(str(tmp_path), 64, 3)
  assert images.shape == (8, 64, 64, 3) and images.dtype == np.uint8


@pytest.mark.parametrize("setup,message", [
    (lambda p: p / "missing", "is not a folder"),
    (lambda p: p, "contains no images"),
])
def test_image_folder_errors_name_the_path(tmp_path, setup, message):
  (tmp_path / "readme.md").write_text("x")
  path = str(setup(tmp_path))
  with pytest.raises(UsageError) as e:
    input_pipeline.load_image_folder(path, 32, 3)
  assert message in str(e.value) and repr(path) in str(e.value)


def test_image_folder_unreadable_file_is_named(tmp_path):
  make_image_folder(tmp_path, count=2)
  (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  with pytest.raises(UsageError, match="broken.jpg"):
    input_pipeline.load_image_folder(str(tmp_path), 32, 3)


@pytest.mark.parametrize("name,size,channels", [("mnist", 32, 1), ("celeb_a", 64, 3),
                                                ("cifar10", 32, 3)])
def test_tfds_sources_with_mock_data(name, size, channels):
  with tfds.testing.mock_data(num_examples=6):
    images = input_pipeline.load_tfds(name, "train", "", size, channels)
  assert images.shape == (6, size, size, channels) and images.dtype == np.uint8
  assert images.std() > 10  # real (random) content, not a constant fill


def test_tfds_unknown_name():
  with pytest.raises(UsageError, match="no dataset named 'no_such_ds'"):
    input_pipeline.load_tfds("no_such_ds", "train", "", 32, 1)


def test_tfds_not_prepared_says_what_to_do(tmp_path):
  with pytest.raises(UsageError) as e:
    input_pipeline.load_tfds("mnist", "train", str(tmp_path), 32, 1)
  message = str(e.value)
  assert "not prepared" in message and "tfds build mnist" in message and "\n" not in message


def test_load_images_dispatch_and_too_few_images(tmp_path):
  make_image_folder(tmp_path, count=3)
  config = default.get_config()
  config.dataset, config.data_dir, config.image_size, config.channels = (
      "imagefolder", str(tmp_path), 32, 3)
  config.batch_size = 3
  assert input_pipeline.load_images(config).shape == (3, 32, 32, 3)
  config.batch_size = 4
  with pytest.raises(UsageError, match="has 3 images, fewer than config.batch_size=4"):
    input_pipeline.load_images(config)


def test_batches_are_seeded_per_epoch_permutations():
  images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
  batches = input_pipeline.Batches(images, 3, seed=7)
  assert batches.steps_per_epoch == 3
  epoch0 = np.concatenate([batches[s].ravel() for s in range(3)])
  epoch1 = np.concatenate([batches[s].ravel() for s in range(3, 6)])
  assert len(set(epoch0)) == 9 and len(set(epoch1)) == 9  # no repeats within an epoch
  assert not np.array_equal(epoch0, epoch1)
  again = input_pipeline.Batches(images, 3, seed=7)
  np.testing.assert_array_equal(again[4], batches[4])  # resuming mid-run: same batch
  other = input_pipeline.Batches(images, 3, seed=8)
  assert not np.array_equal(np.concatenate([other[s].ravel() for s in range(3)]), epoch0)
  np.testing.assert_array_equal(
      np.concatenate(list(batches.iterate(3, 6))).ravel(), epoch1)
