"""Image grids and PNG writing."""

import io
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from dcgan_jax import errors


def to_uint8(images_in_minus1_1: jax.Array) -> jax.Array:
  """Converts [-1, 1] floats to [0, 255] uint8, rounding to nearest (halves to even); numpy or JAX
  arrays, also inside jit."""
  x = (jnp.asarray(images_in_minus1_1, jnp.float32) + 1.0) * 127.5
  return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)


def make_grid(images_NxHxWxC: np.ndarray, ncols: int | None = None, padding: int = 2,
              pad_value: int = 0) -> np.ndarray:
  """Tiles N images into one (rows*(H+p)+p, cols*(W+p)+p, C) image, row-major."""
  n, h, w, c = images_NxHxWxC.shape
  ncols = ncols or math.ceil(math.sqrt(n))
  nrows = math.ceil(n / ncols)
  grid = np.full((nrows * (h + padding) + padding, ncols * (w + padding) + padding, c),
                 pad_value, images_NxHxWxC.dtype)
  for i in range(n):
    r, col = divmod(i, ncols)
    y, x = padding + r * (h + padding), padding + col * (w + padding)
    grid[y:y + h, x:x + w] = images_NxHxWxC[i]
  return grid


def png_bytes(image_HxWxC: np.ndarray) -> bytes:
  """Returns a uint8 (H, W, 1 or 3) image encoded as PNG."""
  image = image_HxWxC[..., 0] if image_HxWxC.shape[-1] == 1 else image_HxWxC
  out = io.BytesIO()
  Image.fromarray(image).save(out, format="PNG")
  return out.getvalue()


def save_png(path: str, image_HxWxC: np.ndarray) -> None:
  """Writes a uint8 (H, W, 1 or 3) image, atomically (temp file, then rename)."""
  tmp = f"{path}.tmp"
  with errors.writing(path, undo=lambda: os.remove(tmp)):
    with open(tmp, "wb") as f:
      f.write(png_bytes(image_HxWxC))
    os.replace(tmp, path)


def save_gif(path: str, frames_NxHxWxC: np.ndarray, frame_ms: int = 80, scale: int = 1) -> None:
  """Writes an endlessly looping animated GIF of uint8 frames (enlarged `scale` times, nearest),
  written atomically."""
  pictures = []
  for frame in frames_NxHxWxC:
    picture = Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame)
    if scale > 1:
      picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    pictures.append(picture)
  tmp = f"{path}.tmp"
  with errors.writing(path, undo=lambda: os.remove(tmp)):
    pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:],
                     duration=frame_ms, loop=0)
    os.replace(tmp, path)
