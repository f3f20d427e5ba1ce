"""Grids, value conversion and PNG writing."""

import numpy as np
from PIL import Image

from dcgan_jax import images


def test_to_uint8_maps_range_and_rounds():
  got = images.to_uint8(np.array([-1.0, 1.0, 0.0, -2.0, 2.0, 0.004]))
  np.testing.assert_array_equal(got, [0, 255, 128, 0, 255, 128])


def test_make_grid_layout():
  tiles = np.stack([np.full((2, 3, 1), i + 1, np.uint8) for i in range(5)])
  grid = images.make_grid(tiles, ncols=3, padding=1)
  assert grid.shape == (2 * 3 + 1, 3 * 4 + 1, 1)
  assert grid[1, 1, 0] == 1 and grid[1, 5, 0] == 2 and grid[4, 1, 0] == 4 and grid[4, 5, 0] == 5
  assert grid[4, 9, 0] == 0  # the sixth cell stays padding
  assert grid[0, :, 0].max() == 0  # top padding row


def test_make_grid_default_is_square():
  grid = images.make_grid(np.zeros((64, 32, 32, 3), np.uint8))
  assert grid.shape == (8 * 34 + 2, 8 * 34 + 2, 3)


def test_save_png_round_trip(tmp_path):
  for channels in (1, 3):
    pixels = np.random.default_rng(channels).integers(0, 256, (5, 7, channels), dtype=np.uint8)
    path = str(tmp_path / f"x{channels}.png")
    images.save_png(path, pixels)
    loaded = np.asarray(Image.open(path)).reshape(5, 7, channels)
    np.testing.assert_array_equal(loaded, pixels)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["x1.png", "x3.png"]  # no temp files left
