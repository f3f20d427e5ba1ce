"""Sample grids and single images from a generator, during training or from a workdir."""

import json
import os

import jax
import ml_collections
import numpy as np

from dcgan_jax import configuration, images, steps
from dcgan_jax.errors import UsageError

_SAMPLE_NOISE_SALT = 0x5A4D  # separates sample noise from training noise for one seed
_generate = jax.jit(steps.generate, static_argnums=(0, 3))


def sample_noise(seed: int, num: int, nz: int) -> jax.Array:
  """A fixed latent batch (num, nz), determined by the seed alone."""
  return jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), _SAMPLE_NOISE_SALT),
                           (num, nz))


def generate_uint8(gan: steps.GAN, state: steps.TrainState, z_BxN: jax.Array,
                   bn_mode: str) -> np.ndarray:
  """Generated images as uint8 (B, S, S, C)."""
  return images.to_uint8(jax.device_get(_generate(gan, state, z_BxN, bn_mode)))


def write_grid(path: str, images_u8: np.ndarray) -> None:
  images.save_png(path, images.make_grid(images_u8))


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise UsageError(f"--workdir={workdir!r} has no config.json: train there first")
  with open(path) as f:
    saved = json.load(f)
  return ml_collections.ConfigDict({**configuration.ADDED_FIELD_DEFAULTS, **saved})


def sample_from_workdir(workdir: str, seed: int = 0, num_images: int = 0,
                        grid_size: int = 64, bn_mode: str | None = None) -> list[str]:
  """Writes a grid of `grid_size` images, and `num_images` single PNGs, from the
  latest checkpoint in workdir; returns the paths written."""
  from dcgan_jax import checkpoint, train  # pylint: disable=g-import-not-at-top

  if grid_size < 1 or num_images < 0:
    raise UsageError(f"grid_size={grid_size} must be >= 1 and num_images={num_images} >= 0")
  config = load_workdir_config(workdir)
  bn_mode = bn_mode or config.sample_bn_mode
  if bn_mode not in ("train", "eval"):
    raise UsageError(f"bn_mode={bn_mode!r} is not 'train' or 'eval'")
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), create=False)
  step = ckpt.latest_step()
  if step is None:
    raise UsageError(f"--workdir={workdir!r} has no checkpoint to sample from")
  gan = train.build_gan(config, batch_size=grid_size)
  state = ckpt.restore(steps.abstract_train_state(gan))
  ckpt.close()

  out_dir = os.path.join(workdir, "samples")
  os.makedirs(out_dir, exist_ok=True)
  n = max(grid_size, num_images)
  z = sample_noise(seed, n, config.nz)
  batch = grid_size if bn_mode == "train" else n
  pictures = np.concatenate([generate_uint8(gan, state, z[i:i + batch], bn_mode)
                             for i in range(0, n, batch)])
  written = [os.path.join(out_dir, f"sample_step{step:07d}_seed{seed}_{bn_mode}.png")]
  write_grid(written[0], pictures[:grid_size])
  if num_images:
    single_dir = os.path.join(out_dir, f"step{step:07d}_seed{seed}_{bn_mode}")
    os.makedirs(single_dir, exist_ok=True)
    for i in range(num_images):
      written.append(os.path.join(single_dir, f"{i:05d}.png"))
      images.save_png(written[-1], pictures[i])
  return written
