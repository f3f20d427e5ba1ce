"""Sampling from a trained workdir: grids, single images, seeds and BatchNorm modes."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from dcgan_jax import configuration, sampling, steps, train
from dcgan_jax import workdir as workdir_lib
from dcgan_jax.errors import UsageError
from conftest import tiny_config, tiny_gan

pytestmark = pytest.mark.slow  # trains a run


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("sample_run"))
  config = tiny_config(3)
  config.g_ema_decay = 0.0  # the refusal of ema=True needs a run without G's EMA
  train.train_and_evaluate(config, path)
  return path


def test_grid_and_single_images(workdir):
  paths = sampling.sample_from_workdir(workdir, seed=1, num_images=3, grid_size=9)
  assert paths[0].endswith("samples/sample_step0000003_seed1_train.png")
  assert Image.open(paths[0]).size == (3 * 34 + 2, 3 * 34 + 2)
  assert len(paths) == 4 and all(Image.open(p).size == (32, 32) for p in paths[1:])


def test_seed_fixes_the_images(workdir):
  a = np.asarray(Image.open(sampling.sample_from_workdir(workdir, seed=5, grid_size=4)[0]))
  b = np.asarray(Image.open(sampling.sample_from_workdir(workdir, seed=5, grid_size=4)[0]))
  c = np.asarray(Image.open(sampling.sample_from_workdir(workdir, seed=6, grid_size=4)[0]))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_bn_modes_give_different_images(workdir):
  train_mode = sampling.sample_from_workdir(workdir, seed=2, grid_size=4, bn_mode="train")[0]
  eval_mode = sampling.sample_from_workdir(workdir, seed=2, grid_size=4, bn_mode="eval")[0]
  assert eval_mode.endswith("_eval.png")
  assert not np.array_equal(np.asarray(Image.open(train_mode)), np.asarray(Image.open(eval_mode)))


def test_workdir_from_before_later_config_fields(workdir):
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    saved = json.load(f)
  older = {k: v for k, v in saved.items() if k not in configuration.ADDED_FIELD_DEFAULTS}
  with open(path, "w") as f:
    json.dump(older, f)
  try:
    assert Image.open(sampling.sample_from_workdir(workdir, grid_size=4)[0]).size == (70, 70)
  finally:
    with open(path, "w") as f:
      json.dump(saved, f)


def test_errors_name_the_problem(workdir, tmp_path):
  with pytest.raises(UsageError, match="has no config.json"):
    sampling.sample_from_workdir(str(tmp_path))
  with pytest.raises(UsageError, match="bn_mode='test'"):
    sampling.sample_from_workdir(workdir, bn_mode="test")
  with pytest.raises(UsageError, match="interpolation_frames=1"):
    sampling.sample_from_workdir(workdir, interpolation_frames=1)
  with pytest.raises(UsageError, match="has no best checkpoint"):
    sampling.sample_from_workdir(workdir, which="best")
  with pytest.raises(UsageError, match="without a generator EMA"):
    sampling.sample_from_workdir(workdir, ema=True)


def test_slerp_endpoints_norms_and_angles():
  rng = np.random.default_rng(0)
  z0, z1 = rng.normal(size=100), rng.normal(size=100)
  t = np.linspace(0, 1, 9)
  path = sampling.slerp(z0, z1, t)
  np.testing.assert_allclose(path[0], z0, rtol=1e-5)
  np.testing.assert_allclose(path[-1], z1, rtol=1e-5)
  norms = np.linalg.norm(path, axis=1)
  np.testing.assert_allclose(norms, (1 - t) * np.linalg.norm(z0) + t * np.linalg.norm(z1),
                             rtol=1e-5)
  # Equal steps of angle along the great circle.
  unit = path / norms[:, None]
  angles = np.arccos(np.clip(np.sum(unit[1:] * unit[:-1], 1), -1, 1))
  np.testing.assert_allclose(angles, angles[0], rtol=1e-4)
  # Parallel latents: a straight path, no division by zero.
  np.testing.assert_allclose(sampling.slerp(z0, 2 * z0, np.array([0.5]))[0], 1.5 * z0, rtol=1e-5)


def test_interpolation_gif_and_strip(workdir):
  paths = sampling.sample_from_workdir(workdir, seed=4, grid_size=4, interpolation_frames=5)
  gif, strip = paths[-2:]
  assert gif.endswith("interpolation_step0000003_seed4_train_to_seed5.gif")
  with Image.open(gif) as animation:
    assert animation.n_frames == 2 * 5 - 2  # there and back
    assert animation.size == (128, 128)  # 32 px enlarged 4x
    assert animation.info["loop"] == 0
  assert Image.open(strip).size == (5 * 34 + 2, 34 + 2)
  # The strip's ends are the generated images of the two seeds' first latents.
  row = np.asarray(Image.open(strip))
  config, gan, state, _ = workdir_lib.restore(workdir)
  noise = lambda seed: sampling.fixed_noise(seed, 1, config.nz, sampling.SAMPLE_SALT)[0]
  z = sampling.slerp(noise(4), noise(5), np.linspace(0, 1, 5))
  expected = sampling.generate_images(gan, state, z, 4, "train")  # in batches of the grid
  np.testing.assert_array_equal(row[2:34, 2:34], expected[0, ..., 0])
  np.testing.assert_array_equal(row[2:34, 4 * 34 + 2:5 * 34], expected[4, ..., 0])


def test_one_generation_policy_for_every_number_of_images():
  gan = tiny_gan()
  state = steps.init_train_state(gan, 0)
  z = sampling.fixed_noise(0, 10, gan.nz, sampling.EVAL_SALT)
  many = sampling.generate_images(gan, state, z, 4, "train")
  assert many.shape == (10, 32, 32, 1) and many.dtype == np.uint8
  by_batch = [sampling.generate_images(gan, state, z[i:i + 4], 4, "train") for i in (0, 4)]
  np.testing.assert_array_equal(many[:8], np.concatenate(by_batch))
  # The last batch of 2 is filled up with rows 0 and 1, so its statistics are of 4 images.
  last = sampling.generate_images(gan, state, np.concatenate([z[8:], z[:2]]), 4, "train")
  np.testing.assert_array_equal(many[8:], last[:2])
  # A set smaller than a batch repeats its latents: 3 latents in a batch of 8 are 0 1 2 0 1 2 0 1.
  few = sampling.generate_images(gan, state, z[:3], 8, "train")
  repeated = sampling.generate_images(gan, state, z[np.array([0, 1, 2, 0, 1, 2, 0, 1])], 8, "train")
  np.testing.assert_array_equal(few, repeated[:3])
  # Batch statistics shape the images in 'train' mode; in 'eval' mode the batch does not.
  assert not np.array_equal(many[:3], few)
  alone = sampling.generate_images(gan, state, z[:3], 8, "eval").astype(int)
  among = sampling.generate_images(gan, state, z, 4, "eval")[:3].astype(int)
  assert np.abs(alone - among).max() <= 1  # at most a rounding apart
  # Every batch has one size: a third call of another N compiles nothing new.
  traces = sampling.traces()
  sampling.generate_images(gan, state, z[:7], 4, "train")
  assert sampling.traces() == traces


def test_fixed_noise_is_fixed_by_seed_and_salt():
  a = sampling.fixed_noise(0, 10, 16, sampling.EVAL_SALT)
  np.testing.assert_array_equal(a, sampling.fixed_noise(0, 10, 16, sampling.EVAL_SALT))
  assert not np.array_equal(a, sampling.fixed_noise(1, 10, 16, sampling.EVAL_SALT))
  assert not np.array_equal(a, sampling.fixed_noise(0, 10, 16, sampling.SAMPLE_SALT))
