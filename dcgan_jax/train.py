"""The training loop: data, steps, metrics, samples, checkpoints and resume."""

import json
import os
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from dcgan_jax import checkpoint, configuration, input_pipeline, metrics, sampling, steps
from dcgan_jax.errors import UsageError
from dcgan_jax.models import Discriminator, Generator

# One D step and one G step per dispatch; the state's buffers are reused in place.
_train_step = jax.jit(steps.train_step, static_argnums=0, donate_argnums=1)


def build_gan(config: ml_collections.ConfigDict, batch_size: int | None = None) -> steps.GAN:
  """The models, optimizers and loss settings that a config describes."""
  return steps.GAN(
      generator=Generator(config.image_size, config.channels, config.ngf, config.upconv_impl),
      discriminator=Discriminator(config.image_size, config.ndf),
      g_opt=steps.Adam(config.g_learning_rate, config.adam_b1, config.adam_b2, config.adam_eps),
      d_opt=steps.Adam(config.d_learning_rate, config.adam_b1, config.adam_b2, config.adam_eps),
      nz=config.nz, batch_size=batch_size or config.batch_size,
      label_smoothing=config.label_smoothing)


def check_workdir(workdir: str) -> None:
  """Creates workdir if needed and proves it is writable, touching nothing in it."""
  probe = os.path.join(workdir, f".write_probe_{os.getpid()}")
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UsageError(f"--workdir={workdir!r} cannot be written: {e.strerror or e}") from e


def restore_or_init(gan: steps.GAN, ckpt: checkpoint.Checkpointer, seed: int) -> steps.TrainState:
  """The latest checkpoint if there is one, else a freshly initialised state."""
  if ckpt.latest_step() is None:
    return steps.init_train_state(gan, seed)
  try:
    return ckpt.restore(steps.abstract_train_state(gan))
  except (ValueError, KeyError, TypeError) as e:
    raise UsageError(f"the checkpoint in {ckpt.directory} (step {ckpt.latest_step()}) does not "
                     "fit this config's model (image_size, channels, nz, ngf, ndf): use the "
                     f"config it was trained with or another --workdir ({type(e).__name__})") from e


class Progress:
  """A tqdm bar with the current losses on a terminal, plain log lines otherwise."""

  def __init__(self, start: int, total: int):
    self._bar = None
    if sys.stderr.isatty():
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
    self._last = start

  def update(self, row: dict) -> None:
    text = (f"loss_D {row['loss_d']:.4f} loss_G {row['loss_g']:.4f} D(x) {row['d_x']:.3f} "
            f"D(G(z)) {row['d_g_z1']:.3f}/{row['d_g_z2']:.3f}")
    if self._bar is not None:
      self._bar.set_postfix_str(text, refresh=False)
      self._bar.update(row["step"] - self._last)
    else:
      logging.info("step %d epoch %.2f %s %.1f images/s", row["step"], row["epoch"], text,
                   row["images_per_s"])
    self._last = row["step"]

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  path = os.path.join(workdir, "config.json")
  with open(f"{path}.tmp", "w") as f:
    json.dump(config.to_dict(), f, indent=2, sort_keys=True)
  os.replace(f"{path}.tmp", path)


def _mean_row(pending: list[steps.Metrics]) -> dict[str, float]:
  stacked = jax.device_get(pending)
  return {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]}


def _train_loop(config: ml_collections.ConfigDict, workdir: str, gan: steps.GAN,
                state: steps.TrainState, data: np.ndarray, total: int,
                ckpt: checkpoint.Checkpointer) -> steps.TrainState:
  """Steps from state.step to total, logging, sampling and checkpointing on the way."""
  start = int(state.step)
  writer = metrics.MetricsWriter(os.path.join(workdir, "metrics.csv"), resume_step=start)
  sample_dir = os.path.join(workdir, "samples")
  os.makedirs(sample_dir, exist_ok=True)
  fixed_z = sampling.sample_noise(config.seed, config.num_sample_images, config.nz)
  sample_gan = build_gan(config, batch_size=config.num_sample_images)
  batches = input_pipeline.Batches(data, config.batch_size, config.seed)
  progress = Progress(start, total)

  pending, timed_steps, t0 = [], 0, time.perf_counter()
  for step in range(start, total):
    state, step_metrics = _train_step(gan, state, batches[step])
    pending.append(step_metrics)
    done = step + 1
    if step == start:  # leave compilation out of images/s
      jax.block_until_ready(step_metrics)
      t0 = time.perf_counter()
    else:
      timed_steps += 1
    last = done == total
    if done % config.log_every_steps == 0 or last:
      row = _mean_row(pending)
      elapsed = time.perf_counter() - t0
      row.update(step=done, epoch=done / batches.steps_per_epoch, seconds=elapsed,
                 images_per_s=timed_steps * config.batch_size / elapsed if timed_steps else
                 float("nan"))
      writer.write(row)
      progress.update(row)
      pending, timed_steps, t0 = [], 0, time.perf_counter()
    if done % config.sample_every_steps == 0 or last:
      grid = sampling.generate_uint8(sample_gan, state, fixed_z, config.sample_bn_mode)
      sampling.write_grid(os.path.join(sample_dir, f"step_{done:07d}.png"), grid)
      if last:
        sampling.write_grid(os.path.join(workdir, "samples.png"), grid)
    if done % config.checkpoint_every_steps == 0 or last:
      ckpt.save(state)
  progress.close()
  return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> steps.TrainState:
  """Trains (or resumes training) and writes metrics, samples, plots and checkpoints."""
  configuration.validate(config)
  check_workdir(workdir)
  data = input_pipeline.load_images(config)
  total = configuration.total_steps(config, len(data))
  gan = build_gan(config)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 max_to_keep=config.max_checkpoints_to_keep or None)
  try:  # closing waits for a checkpoint still being written, also on errors and Ctrl-C
    state = restore_or_init(gan, ckpt, config.seed)
    start = int(state.step)
    logging.info("%d images %s, %d steps per epoch; %s at step %d of %d", len(data),
                 data.shape[1:], len(data) // config.batch_size,
                 "resuming" if start else "starting", start, total)
    _write_config(config, workdir)
    if start >= total:
      logging.info("nothing to train: the checkpoint is at step %d >= %d", start, total)
      return state
    state = _train_loop(config, workdir, gan, state, data, total, ckpt)
  finally:
    ckpt.close()
  metrics.plot_losses(os.path.join(workdir, "metrics.csv"), os.path.join(workdir, "losses.png"))
  return state
