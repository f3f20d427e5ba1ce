"""Generating images: the one batching policy, fixed noise, sample grids, single images and
interpolations from a workdir."""

import functools
import os
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dcgan_jax import images, steps
from dcgan_jax import workdir as workdir_lib
from dcgan_jax.errors import UsageError

SAMPLE_SALT = 0x5A4D  # the noise of sample grids, singles, interpolations and the page
EVAL_SALT = 0xE7A1  # the noise of every evaluation of a run
MAX_SEED = 2**31 - 1  # sample seeds are 0 .. MAX_SEED, in sample mode and on the page
MAX_GRID_SIZE = 1024
MAX_SINGLE_IMAGES = 10_000
MAX_INTERPOLATION_FRAMES = 256
_traces = 0  # times the generating function was traced (compiled) in this process


def fixed_noise(seed: int, num: int, nz: int, salt: int) -> jax.Array:
  """Draws latents (N, Z) fixed by the seed and the salt alone (the salt keeps sample,
  evaluation and training noise of one seed apart)."""
  return jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), salt), (num, nz))


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _generate_u8(gan: steps.GAN, state: steps.TrainState, z_BxZ: jax.Array, bn_mode: str,
                 ema: bool, labels_B: jax.Array | None = None) -> jax.Array:
  global _traces
  _traces += 1  # runs only while jit traces
  return images.to_uint8(steps.generate(gan, state, z_BxZ, bn_mode, ema, labels_B))


class GridNoise(NamedTuple):
  """The latents (N, Z) of a run's sample grids, their classes (None for an unconditional run)
  and the grid's columns (None: as square as it comes)."""
  z: jax.Array
  labels: np.ndarray | None
  ncols: int | None


def grid_noise(seed: int, num_images: int, nz: int, classes: Sequence[int] = ()) -> GridNoise:
  """The fixed noise of a grid of num_images latents; for a conditional run one row per class
  of `classes`, each of the same max(1, num_images // len(classes)) latents (one class: a
  square grid of it)."""
  if not classes:
    return GridNoise(fixed_noise(seed, num_images, nz, SAMPLE_SALT), None, None)
  if len(classes) == 1:
    return GridNoise(fixed_noise(seed, num_images, nz, SAMPLE_SALT),
                     np.full(num_images, classes[0], np.int32), None)
  per_row = max(1, num_images // len(classes))
  z = jnp.tile(fixed_noise(seed, per_row, nz, SAMPLE_SALT), (len(classes), 1))
  return GridNoise(z, np.repeat(np.asarray(classes, np.int32), per_row), per_row)


def check_labels(labels: Sequence[int] | None, class_names: tuple[str, ...], name: str
                 ) -> tuple[int, ...]:
  """The classes asked for (by index), checked against a run's classes (none: an
  unconditional run); UsageError naming the value and what is allowed."""
  if labels is None:
    return ()
  labels = tuple(labels)
  if not class_names:
    raise UsageError(f"{name}={','.join(map(str, labels))} asks for a class, but this run is "
                     "unconditional (config.conditional False): it has no classes")
  for label in labels:
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
      raise UsageError(f"{name}={label!r} is not a class index (a whole number)")
    if not 0 <= label < len(class_names):
      named = ", ".join(f"{i} {n!r}" for i, n in enumerate(class_names[:12]))
      more = f", ... ({len(class_names):,} classes)" if len(class_names) > 12 else ""
      raise UsageError(f"{name}={label} is not a class of this run: 0 to "
                       f"{len(class_names) - 1} ({named}{more})")
  if not labels:
    raise UsageError(f"{name} names no class")
  return labels


def parse_labels(text: str | None, name: str = "--label") -> tuple[int, ...] | None:
  """'7' or '0,3,7' as class indices; None for no text; UsageError for anything else."""
  if text is None:
    return None
  labels = []
  for part in text.split(","):
    try:
      labels.append(int(part.strip()))
    except ValueError:
      raise UsageError(f"{name}={text!r}: {part.strip()!r} is not a class index (a whole "
                       "number; several: 0,3,7)") from None
  return tuple(labels)


def traces() -> int:
  """Counts the compilations of the generating function so far in this process."""
  return _traces


def even_labels(num: int, num_classes: int) -> np.ndarray:
  """Classes drawn evenly for num images: 0, 1, ..., num_classes - 1, 0, 1, ... (int32)."""
  return (np.arange(num) % num_classes).astype(np.int32)


def generate_images(gan: steps.GAN, state: steps.TrainState, z_NxZ: jax.Array,
                    batch_size: int, bn_mode: str, ema: bool = False,
                    labels_N: np.ndarray | None = None) -> np.ndarray:
  """Generates uint8 images (N, S, S, C) of G (or its EMA), one per latent (of class
  labels_N[i] for a conditional G: by default classes drawn evenly, even_labels).

  The one policy of every caller (training grids, evaluation, sample mode, the page): the
  latents go through G in batches of batch_size, each with its own BatchNorm statistics in
  'train' mode; the last batch (or a set smaller than one batch) is filled up by repeating
  the latents from the first, and the extra images are cut. Every batch has one size, so one
  compilation serves every N.
  """
  z_NxZ = jnp.asarray(z_NxZ, jnp.float32)
  n = len(z_NxZ)
  if gan.num_classes and labels_N is None:
    labels_N = even_labels(n, gan.num_classes)
  if not gan.num_classes and labels_N is not None:
    raise ValueError("an unconditional generator takes no labels")
  size = -(-n // batch_size) * batch_size
  padded = jnp.resize(z_NxZ, (size, z_NxZ.shape[-1]))
  labels = None if labels_N is None else jnp.resize(jnp.asarray(labels_N, jnp.int32), (size,))
  batches = [_generate_u8(gan, state, padded[i:i + batch_size], bn_mode, ema,
                          None if labels is None else labels[i:i + batch_size])
             for i in range(0, len(padded), batch_size)]  # dispatched without waiting
  return np.concatenate(jax.device_get(batches))[:n]


def check_range(name: str, value: int, low: int, high: int) -> None:
  """Raises UsageError naming a request's value outside [low, high]."""
  if not low <= value <= high:
    raise UsageError(f"{name}={value} is out of range: {low} to {high:,}")


def resolve_bn_mode(bn_mode: str | None, run_default: str) -> str:
  """Returns the BatchNorm mode to sample with (the run's own when None), or raises
  UsageError for another value than 'train' or 'eval'."""
  bn_mode = bn_mode or run_default
  if bn_mode not in ("train", "eval"):
    raise UsageError(f"bn_mode={bn_mode!r} is not 'train' or 'eval'")
  return bn_mode


def write_grid(path: str, images_u8: np.ndarray) -> None:
  images.save_png(path, images.make_grid(images_u8))


def interpolation_noise(seed_a: int, seed_b: int, frames: int, nz: int) -> np.ndarray:
  """Returns `frames` latents (T, Z) on the slerp from seed_a's first latent to seed_b's."""
  z0 = np.asarray(fixed_noise(seed_a, 1, nz, SAMPLE_SALT))[0]
  z1 = np.asarray(fixed_noise(seed_b, 1, nz, SAMPLE_SALT))[0]
  return slerp(z0, z1, np.linspace(0.0, 1.0, frames))


def slerp(z0: np.ndarray, z1: np.ndarray, t: np.ndarray) -> np.ndarray:
  """Interpolates spherically from z0 (t=0) to z1 (t=1) for each t, (T, Z): moves along the
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


def sample_from_workdir(workdir: str, seed: int = 0, num_images: int = 0,
                        grid_size: int = 64, bn_mode: str | None = None,
                        interpolation_frames: int = 0, which: str = "latest",
                        ema: bool | None = None, labels: Sequence[int] | None = None
                        ) -> list[str]:
  """Writes, from the latest (or best) checkpoint in workdir (G's EMA where the run keeps one,
  unless ema=False; workdir_lib.use_ema): a grid of `grid_size` images,
  `num_images` single PNGs, and with interpolation_frames > 0 a slerp between the latents of
  seeds `seed` and `seed + 1` as an animated GIF and a PNG strip. Returns the paths written.

  A conditional run draws the classes `labels` (all of them by default): the grid has a row
  per class, the singles go through the classes in turn, and an interpolation stays within
  its one class (labels must then name exactly one)."""
  for name, value, low, high in (("sample_seed", seed, 0, MAX_SEED),
                                 ("grid_size", grid_size, 1, MAX_GRID_SIZE),
                                 ("num_images", num_images, 0, MAX_SINGLE_IMAGES),
                                 ("interpolation_frames", interpolation_frames, 0,
                                  MAX_INTERPOLATION_FRAMES)):
    check_range(f"--{name}", value, low, high)
  if interpolation_frames == 1:
    raise UsageError("--interpolation_frames=1: an interpolation has 0 or at least 2 frames")
  config, gan, state, step = workdir_lib.restore(workdir, which, ema)
  ema = workdir_lib.use_ema(state, ema)
  bn_mode = resolve_bn_mode(bn_mode, config.sample_bn_mode)
  names = workdir_lib.class_names(config, workdir)
  asked = check_labels(labels, names, "--label")
  if gan.num_classes and interpolation_frames and len(asked) != 1:
    raise UsageError("--interpolation_frames: an interpolation of a conditional run stays "
                     "within one class: give --label with one class")

  out_dir = os.path.join(workdir, "samples")
  os.makedirs(out_dir, exist_ok=True)
  tag = (f"step{step:07d}_seed{seed}_{bn_mode}{'_ema' if ema else ''}"
         f"{'_class' + '-'.join(map(str, asked)) if asked else ''}")
  written = [os.path.join(out_dir, f"sample_{tag}.png")]
  if gan.num_classes:
    classes = asked or tuple(range(gan.num_classes))
    grid = grid_noise(seed, grid_size, config.nz, classes)
    images.save_png(written[0], images.make_grid(
        generate_images(gan, state, grid.z, grid_size, bn_mode, ema, grid.labels),
        ncols=grid.ncols))
    z = fixed_noise(seed, num_images, config.nz, SAMPLE_SALT)
    turns = np.resize(np.asarray(classes, np.int32), num_images)
    pictures = generate_images(gan, state, z, grid_size, bn_mode, ema, turns) if num_images else []
  else:
    z = fixed_noise(seed, max(grid_size, num_images), config.nz, SAMPLE_SALT)
    pictures = generate_images(gan, state, z, grid_size, bn_mode, ema)
    write_grid(written[0], pictures[:grid_size])
  if num_images:
    single_dir = os.path.join(out_dir, tag)
    os.makedirs(single_dir, exist_ok=True)
    for i in range(num_images):
      written.append(os.path.join(single_dir, f"{i:05d}.png"))
      images.save_png(written[-1], pictures[i])
  if interpolation_frames:
    path = os.path.join(out_dir, f"interpolation_{tag}_to_seed{seed + 1}")
    written += write_interpolation(path, gan, state, seed, interpolation_frames, grid_size,
                                   bn_mode, ema, asked[0] if asked else None)
  return written


def write_interpolation(path_stem: str, gan: steps.GAN, state: steps.TrainState, seed: int,
                        frames: int, batch_size: int, bn_mode: str, ema: bool,
                        label: int | None = None) -> list[str]:
  """Writes the slerp from seed's first latent to seed + 1's (of class label, for a
  conditional G) as `path_stem`.gif (there and back) and `path_stem`.png (one row); generated
  in batches of batch_size, as a grid is."""
  z = interpolation_noise(seed, seed + 1, frames, gan.nz)
  labels = None if label is None else np.full(frames, label, np.int32)
  pictures = generate_images(gan, state, z, batch_size, bn_mode, ema, labels)
  gif, strip = f"{path_stem}.gif", f"{path_stem}.png"
  scale = max(1, 128 // pictures.shape[1])
  images.save_gif(gif, np.concatenate([pictures, pictures[-2:0:-1]]), scale=scale)
  images.save_png(strip, images.make_grid(pictures, ncols=frames))
  return [gif, strip]
