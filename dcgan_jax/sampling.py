"""Sample grids and single images from a generator, during training or from a workdir."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dcgan_jax import configuration, images, steps
from dcgan_jax.errors import RunError, UsageError

_SAMPLE_NOISE_SALT = 0x5A4D  # separates sample noise from training noise for one seed
MAX_SEED = 2**31 - 1  # sample seeds are 0 .. MAX_SEED, in sample mode and on the page
MAX_GRID_SIZE = 1024
MAX_SINGLE_IMAGES = 10_000
MAX_INTERPOLATION_FRAMES = 256
_EVAL_MODE_BATCH = 256  # BatchNorm on running averages: any batch gives the same images


def sample_noise(seed: int, num: int, nz: int) -> jax.Array:
  """A fixed latent batch (num, nz), determined by the seed alone."""
  return jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), _SAMPLE_NOISE_SALT),
                           (num, nz))


def generate_uint8(gan: steps.GAN, state: steps.TrainState, z_BxN: jax.Array,
                   bn_mode: str, ema: bool = False) -> np.ndarray:
  """Generated images (of G's EMA with ema=True) as uint8 (B, S, S, C)."""
  return generate_batches_uint8(gan, state, jnp.asarray(z_BxN)[None], bn_mode, ema)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _generate_batches_u8(gan: steps.GAN, state: steps.TrainState, z_KxBxN: jax.Array,
                         bn_mode: str, ema: bool) -> jax.Array:
  return jax.lax.map(lambda z: images.to_uint8(steps.generate(gan, state, z, bn_mode, ema)),
                     z_KxBxN)


def generate_batches_uint8(gan: steps.GAN, state: steps.TrainState, z_KxBxN: jax.Array,
                           bn_mode: str, ema: bool = False) -> np.ndarray:
  """K batches generated one after the other in one dispatch (each batch its own BatchNorm
  statistics in 'train' mode), as uint8 (K * B, S, S, C)."""
  out = jax.device_get(_generate_batches_u8(gan, state, z_KxBxN, bn_mode, ema))
  return out.reshape((-1,) + out.shape[2:])


def write_grid(path: str, images_u8: np.ndarray) -> None:
  images.save_png(path, images.make_grid(images_u8))


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise UsageError(f"--workdir={workdir!r} has no config.json: train there first")
  with open(path) as f:
    saved = json.load(f)
  return ml_collections.ConfigDict({**configuration.ADDED_FIELD_DEFAULTS, **saved})


def interpolation_noise(seed_a: int, seed_b: int, frames: int, nz: int) -> np.ndarray:
  """`frames` latents (frames, nz) on the slerp from seed_a's first latent to seed_b's."""
  z0 = np.asarray(sample_noise(seed_a, 1, nz))[0]
  z1 = np.asarray(sample_noise(seed_b, 1, nz))[0]
  return slerp(z0, z1, np.linspace(0.0, 1.0, frames))


def slerp(z0: np.ndarray, z1: np.ndarray, t: np.ndarray) -> np.ndarray:
  """Spherical interpolation from z0 (t=0) to z1 (t=1) for each t, (T, N): moves along the
  great circle between their directions, with the norm interpolated linearly, so every point
  has a norm typical of N(0, I) latents (a straight line passes near the origin)."""
  z0, z1, t = np.asarray(z0, np.float64), np.asarray(z1, np.float64), np.asarray(t)[:, None]
  n0, n1 = np.linalg.norm(z0), np.linalg.norm(z1)
  u0, u1 = z0 / n0, z1 / n1
  omega = np.arccos(np.clip(u0 @ u1, -1.0, 1.0))
  if np.sin(omega) < 1e-6:  # (anti)parallel: the great circle is not unique; go straight
    direction = (1 - t) * u0 + t * u1
  else:
    direction = (np.sin((1 - t) * omega) * u0 + np.sin(t * omega) * u1) / np.sin(omega)
  return (direction * ((1 - t) * n0 + t * n1)).astype(np.float32)


def restore_for_sampling(workdir: str, batch_size: int, which: str = "latest"
                         ) -> tuple[ml_collections.ConfigDict, steps.GAN, steps.TrainState, int]:
  """(config, GAN, state, step) of the latest or the best checkpoint of a workdir."""
  from dcgan_jax import checkpoint, train  # pylint: disable=g-import-not-at-top

  if which not in ("latest", "best"):
    raise UsageError(f"checkpoint={which!r} is not 'latest' or 'best'")
  config = load_workdir_config(workdir)
  folder = os.path.join(workdir, "checkpoints" if which == "latest" else "best")
  if not os.path.isdir(folder):
    raise UsageError(f"--workdir={workdir!r} has no {which} checkpoint ({folder} is missing)")
  ckpt = checkpoint.Checkpointer(folder, create=False)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise UsageError(f"--workdir={workdir!r} has no {which} checkpoint to sample from")
    gan = train.build_gan(config, batch_size=batch_size)
    template = steps.abstract_train_state(gan)
    ckpt.check_fits(template, step)
    try:
      state = ckpt.restore(template)
    except Exception as e:  # pylint: disable=broad-except  # Orbax raises plain Exceptions
      raise RunError(f"the {which} checkpoint, {folder}/{step}, cannot be read "
                     f"({checkpoint.root_cause(e)})") from e
  finally:
    ckpt.close()
  return config, gan, state, step


def sample_from_workdir(workdir: str, seed: int = 0, num_images: int = 0,
                        grid_size: int = 64, bn_mode: str | None = None,
                        interpolation_frames: int = 0, which: str = "latest",
                        ema: bool = False) -> list[str]:
  """Writes, from the latest (or best) checkpoint in workdir: a grid of `grid_size` images,
  `num_images` single PNGs, and with interpolation_frames > 0 a slerp between the latents of
  seeds `seed` and `seed + 1` as an animated GIF and a PNG strip. Returns the paths written."""
  for name, value, low, high in (("sample_seed", seed, 0, MAX_SEED),
                                 ("grid_size", grid_size, 1, MAX_GRID_SIZE),
                                 ("num_images", num_images, 0, MAX_SINGLE_IMAGES),
                                 ("interpolation_frames", interpolation_frames, 0,
                                  MAX_INTERPOLATION_FRAMES)):
    if not low <= value <= high:
      raise UsageError(f"--{name}={value} is out of range: {low} to {high:,}")
  if interpolation_frames == 1:
    raise UsageError("--interpolation_frames=1: an interpolation has 0 or at least 2 frames")
  config, gan, state, step = restore_for_sampling(workdir, grid_size, which)
  bn_mode = bn_mode or config.sample_bn_mode
  if bn_mode not in ("train", "eval"):
    raise UsageError(f"bn_mode={bn_mode!r} is not 'train' or 'eval'")
  if ema and state.g_ema_params is None:
    raise UsageError(f"--workdir={workdir!r} was trained without a generator EMA "
                     "(config.g_ema_decay=0)")

  out_dir = os.path.join(workdir, "samples")
  os.makedirs(out_dir, exist_ok=True)
  tag = f"step{step:07d}_seed{seed}_{bn_mode}{'_ema' if ema else ''}"
  n = max(grid_size, num_images)
  z = sample_noise(seed, n, config.nz)
  batch = grid_size if bn_mode == "train" else min(n, _EVAL_MODE_BATCH)
  pictures = np.concatenate([generate_uint8(gan, state, z[i:i + batch], bn_mode, ema)
                             for i in range(0, n, batch)])
  written = [os.path.join(out_dir, f"sample_{tag}.png")]
  write_grid(written[0], pictures[:grid_size])
  if num_images:
    single_dir = os.path.join(out_dir, tag)
    os.makedirs(single_dir, exist_ok=True)
    for i in range(num_images):
      written.append(os.path.join(single_dir, f"{i:05d}.png"))
      images.save_png(written[-1], pictures[i])
  if interpolation_frames:
    path = os.path.join(out_dir, f"interpolation_{tag}_to_seed{seed + 1}")
    written += write_interpolation(path, config, gan, state, seed, interpolation_frames, bn_mode,
                                   ema)
  return written


def write_interpolation(path_stem: str, config: ml_collections.ConfigDict, gan: steps.GAN,
                        state: steps.TrainState, seed: int, frames: int, bn_mode: str,
                        ema: bool) -> list[str]:
  """The slerp from seed's first latent to seed + 1's, generated as one batch, written as
  `path_stem`.gif (there and back) and `path_stem`.png (one row)."""
  z = interpolation_noise(seed, seed + 1, frames, config.nz)
  pictures = generate_uint8(gan, state, jnp.asarray(z), bn_mode, ema)
  gif, strip = f"{path_stem}.gif", f"{path_stem}.png"
  scale = max(1, 128 // pictures.shape[1])
  images.save_gif(gif, np.concatenate([pictures, pictures[-2:0:-1]]), scale=scale)
  images.save_png(strip, images.make_grid(pictures, ncols=frames))
  return [gif, strip]
