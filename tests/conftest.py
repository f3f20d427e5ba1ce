"""Shared fixtures: a tiny GAN and its state, image folders made on the fly."""

import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

from dcgan_jax import steps
from dcgan_jax.models import Discriminator, Generator


def tiny_gan(batch_size: int = 4, label_smoothing: float = 0.0) -> steps.GAN:
  return steps.GAN(Generator(32, 1, ngf=8), Discriminator(32, ndf=8), steps.Adam(), steps.Adam(),
                   nz=16, batch_size=batch_size, label_smoothing=label_smoothing)


@pytest.fixture
def gan() -> steps.GAN:
  return tiny_gan()


@pytest.fixture
def state(gan) -> steps.TrainState:
  return steps.init_train_state(gan, 0)


@pytest.fixture
def real_batch() -> np.ndarray:
  return np.random.default_rng(0).integers(0, 256, (4, 32, 32, 1), dtype=np.uint8)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache_dir(tmp_path_factory):
  """Decoded-image caches of the tests (and their subprocesses) go to a temp folder; the
  subprocesses (main.py runs, benchmarks) share one JAX compilation cache, new for the
  session, so that the same program is compiled once rather than by every process."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))
    patch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("xla_cache")))
    patch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    yield


jit_train_step = jax.jit(steps.train_step, static_argnums=0)
jit_d_step = jax.jit(steps.d_step, static_argnums=0)
jit_g_step = jax.jit(steps.g_step, static_argnums=0)
jit_apply_train = jax.jit(steps._apply_train, static_argnums=0)  # pylint: disable=protected-access


def make_image_folder(root: pathlib.Path, count: int = 12, size=(178, 218),
                      seed: int = 1) -> pathlib.Path:
  """`count` random RGB images, CelebA-shaped by default, as JPEG and PNG in nested folders."""
  rng = np.random.default_rng(seed)
  for i in range(count):
    sub = root / ("a" if i % 2 else "b") / ("deep" if i % 3 == 0 else "")
    sub.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(sub / f"{i:06d}.{'jpg' if i % 2 else 'png'}")
  return root
