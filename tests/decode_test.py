"""Preprocessing and decoding: geometry, every image mode, unreadable files."""

import numpy as np
import pytest
from PIL import Image

from dcgan_jax import decode


def test_preprocess_resizes_shorter_side_and_center_crops():
  pixels = np.zeros((20, 40), np.uint8)  # 40 wide, 20 high
  pixels[:, 20:] = 255  # right half white
  out = decode.preprocess(Image.fromarray(pixels), 10, 1)
  assert out.shape == (10, 10, 1) and out.dtype == np.uint8
  # The crop keeps original columns 10..29: its left half is black, its right half white.
  assert out[:, :4].max() == 0 and out[:, 6:].min() == 255


def test_preprocess_portrait_keeps_the_middle_rows():
  pixels = np.zeros((218, 178, 3), np.uint8)
  pixels[:12] = pixels[-12:] = 255  # resized to 64x78, the crop drops 7 rows at each end
  out = decode.preprocess(Image.fromarray(pixels), 64, 3)
  assert out.shape == (64, 64, 3) and out.max() == 0
  pixels[:30] = 255
  assert decode.preprocess(Image.fromarray(pixels), 64, 3)[0].min() == 255


@pytest.mark.parametrize("mode,channels,expected", [
    ("L", 3, 77), ("RGB", 1, 76), ("RGBA", 3, 255), ("LA", 1, 77), ("P", 3, 255)])
def test_modes_convert_to_the_channel_count(mode, channels, expected):
  if mode in ("L", "LA"):
    image = Image.fromarray(np.full((8, 8), 77, np.uint8)).convert(mode)
  else:
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    image = Image.fromarray(red).convert(mode)
  out = decode.preprocess(image, 8, channels)
  assert out.shape == (8, 8, channels)
  assert out[..., 0].min() == expected  # red's luma is 76 (ITU-R 601); gray 77 stays 77


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
  pixels = np.array([[0, 256, 32768, 65535]], np.uint16).repeat(4, axis=0)
  Image.fromarray(pixels).save(tmp_path / "g16.png")
  image = decode.open_image(tmp_path / "g16.png")
  assert image.mode.startswith("I;16")
  out = decode.preprocess(image, 4, 1)
  np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])


def test_32bit_integer_image_is_scaled():
  image = Image.fromarray(np.array([[0, 65535]], np.int32).repeat(2, axis=0), "I")
  np.testing.assert_array_equal(decode.preprocess(image, 2, 1)[0, :, 0], [0, 255])


def test_truncated_and_non_image_files_raise_decode_error_naming_the_path(tmp_path):
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
      tmp_path / "full.jpg")
  data = (tmp_path / "full.jpg").read_bytes()
  (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
  (tmp_path / "text.png").write_text("not an image")
  for name in ("cut.jpg", "text.png"):
    with pytest.raises(decode.DecodeError, match=name):
      decode.load_file(tmp_path / name, 32, 3)
  assert decode.load_file(tmp_path / "full.jpg", 32, 3).shape == (32, 32, 3)


def test_jpeg_draft_decodes_at_reduced_scale_close_to_exact(tmp_path):
  yy, xx = np.mgrid[0:218, 0:178]
  smooth = np.stack([yy, xx, (yy + xx) // 2], -1).astype(np.uint8)
  Image.fromarray(smooth).save(tmp_path / "face.jpg", quality=95)
  assert decode.open_image(tmp_path / "face.jpg", draft_size=64).size == (89, 109)  # 1/2 scale
  assert decode.open_image(tmp_path / "face.jpg").size == (178, 218)
  exact = decode.load_file(tmp_path / "face.jpg", 64, 3)
  draft = decode.load_file(tmp_path / "face.jpg", 64, 3, jpeg_draft=True)
  assert draft.shape == exact.shape == (64, 64, 3)
  diff = np.abs(draft.astype(int) - exact.astype(int))
  assert 0 < diff.mean() < 2.0  # not the same pixels, but the same picture
