"""Image decoding and the tutorial's preprocessing, with no JAX import (runs in workers).

`preprocess` converts any Pillow mode to the configured channel count: grayscale,
RGB(A), palette (with or without transparency) and 16-bit images; alpha is dropped as
torchvision's `convert("RGB")` drops it.
"""

import math
import pathlib
import warnings

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_MODES = {1: "L", 3: "RGB"}


class DecodeError(Exception):
  """A file that is not a readable image; the message names the path."""


def _to_8bit(image: Image.Image) -> Image.Image:
  """Scales 16- and 32-bit integer grayscale (not clipped) to 8 bits."""
  if image.mode.startswith("I;16"):
    return Image.fromarray((np.asarray(image, np.uint16) >> 8).astype(np.uint8))
  if image.mode in ("I", "F"):
    pixels = np.asarray(image, np.float64)
    top = 65535.0 if pixels.max() > 255 else 255.0
    return Image.fromarray(np.clip(np.rint(pixels * 255.0 / top), 0, 255).astype(np.uint8))
  if image.mode in ("P", "PA"):
    return image.convert("RGBA")
  return image


def to_channels(image: Image.Image, channels: int) -> Image.Image:
  """Converts any Pillow image to 'L' (channels=1) or 'RGB' (channels=3)."""
  image = _to_8bit(image)
  return image if image.mode == _MODES[channels] else image.convert(_MODES[channels])


def preprocess(image: Image.Image, image_size: int, channels: int) -> np.ndarray:
  """Resizes the shorter side to image_size (bilinear, antialiased), center crop: (S, S, C)
  uint8."""
  image = to_channels(image, channels)
  w, h = image.size
  # torchvision's Resize(int): the shorter side gets image_size, the longer int(size * long / short).
  new_w, new_h = ((image_size, int(image_size * h / w)) if w <= h
                  else (int(image_size * w / h), image_size))
  if (new_w, new_h) != (w, h):
    image = image.resize((new_w, new_h), Image.BILINEAR, reducing_gap=None)
  left = int(round((new_w - image_size) / 2.0))
  top = int(round((new_h - image_size) / 2.0))
  image = image.crop((left, top, left + image_size, top + image_size))
  return np.asarray(image, np.uint8).reshape(image_size, image_size, channels)


def open_image(path: str | pathlib.Path, draft_size: int | None = None,
               max_pixels: int | None = None) -> Image.Image:
  """Returns the fully decoded image at path; DecodeError for anything unreadable or truncated, and,
  with max_pixels, for an image of more pixels (read from its header, before decoding).

  With draft_size, a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose
  shorter side is still >= draft_size: about twice as fast, pixels slightly different.
  """
  try:
    with warnings.catch_warnings():  # Pillow's own warning above 89 Mpx; the limit is ours
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      image = Image.open(path)
    with image:
      if max_pixels and image.size[0] * image.size[1] > max_pixels:
        raise DecodeError(f"{path}: {image.size[0]}x{image.size[1]} pixels, more than "
                          f"config.max_image_pixels={max_pixels:,}")
      if draft_size and image.format == "JPEG":
        w, h = image.size
        scale = draft_size / min(w, h)
        image.draft(image.mode, (math.ceil(w * scale), math.ceil(h * scale)))
      image.load()
      return image
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise DecodeError(f"{path}: {e}") from e


def load_file(path: str | pathlib.Path, image_size: int, channels: int,
              jpeg_draft: bool = False, max_pixels: int | None = None) -> np.ndarray:
  return preprocess(open_image(path, image_size if jpeg_draft else None, max_pixels),
                    image_size, channels)
