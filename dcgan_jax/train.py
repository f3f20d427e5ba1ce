"""The training loop: data, steps, metrics, samples, checkpoints and resume."""

import json
import os
import socket
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from dcgan_jax import (checkpoint, configuration, evaluation, input_pipeline, metrics, parallel,
                       sampling, steps)
from dcgan_jax.errors import UsageError
from dcgan_jax.models import Discriminator, Generator

# K iterations per dispatch (lax.scan); the state's buffers are reused in place.
_train_steps = jax.jit(steps.train_steps, static_argnums=0, donate_argnums=1)
_train_steps_gather = jax.jit(steps.train_steps_gather, static_argnums=0, donate_argnums=1)


def build_gan(config: ml_collections.ConfigDict, batch_size: int | None = None,
              mesh: jax.sharding.Mesh | None = None) -> steps.GAN:
  """The models, optimizers and loss settings that a config describes; with a mesh, the
  training batch is split over its data axis."""
  return steps.GAN(
      generator=Generator(config.image_size, config.channels, config.ngf, config.upconv_impl,
                          config.compute_dtype),
      discriminator=Discriminator(config.image_size, config.ndf, config.downconv_impl,
                                  config.compute_dtype),
      g_opt=steps.Adam(config.g_learning_rate, config.adam_b1, config.adam_b2, config.adam_eps),
      d_opt=steps.Adam(config.d_learning_rate, config.adam_b1, config.adam_b2, config.adam_eps),
      nz=config.nz, batch_size=batch_size or config.batch_size,
      label_smoothing=config.label_smoothing, g_ema_decay=config.g_ema_decay,
      batch_sharding=parallel.batch_sharding(mesh) if mesh is not None else None)


def check_workdir(workdir: str) -> None:
  """Creates workdir if needed and proves it is writable, touching nothing in it."""
  probe = os.path.join(workdir, f".write_probe_{socket.gethostname()}_{os.getpid()}")
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UsageError(f"--workdir={workdir!r} cannot be written: {e.strerror or e}") from e


def restore_or_init(gan: steps.GAN, ckpt: checkpoint.Checkpointer, seed: int,
                    mesh: jax.sharding.Mesh) -> steps.TrainState:
  """The latest checkpoint if there is one, else a freshly initialised state; replicated
  over the mesh (a checkpoint written with any number of devices and processes)."""
  if ckpt.latest_step() is None:
    return steps.init_train_state(gan, seed, parallel.replicated(mesh))
  try:
    return ckpt.restore(steps.abstract_train_state(gan), sharding=parallel.replicated(mesh))
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
  """Means over every step of the pending dispatches (each metric is (K,) per dispatch)."""
  stacked = jax.device_get(parallel.local_copy(pending))
  return {k: float(np.mean(np.concatenate([np.ravel(m[k]) for m in stacked])))
          for k in stacked[0]}


class _Evaluation:
  """Evaluation during a run: the metrics of G (and its EMA) every eval_every_steps, and the
  best checkpoint by config.best_metric kept in workdir/best.

  Process 0 evaluates (the other processes have no evaluator) and sends the best metric's
  value to every process, which all take part in saving the best checkpoint.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               evaluator: evaluation.Evaluator | None, gan: steps.GAN):
    self.config, self.evaluator, self.gan = config, evaluator, gan
    self.metric = evaluation.best_metric_name(config)
    self.columns = (evaluation.metric_names(evaluator, config.g_ema_decay > 0)
                    if evaluator is not None else [])
    self.best = checkpoint.BestCheckpointer(os.path.join(workdir, "best"), self.metric)
    self.z = evaluation.eval_noise(config.seed, config.eval_num_samples, config.nz)

  def due(self, done: int, last: bool) -> bool:
    every = self.config.eval_every_steps
    return every > 0 and (done % every == 0 or last)

  def run(self, state: steps.TrainState) -> dict[str, float]:
    t0 = time.perf_counter()
    values = {}
    if self.evaluator is not None:
      values = evaluation.evaluate_state(self.evaluator, self.gan, parallel.local_copy(state),
                                         self.config, self.z)
    kept = self.best.offer(state, parallel.broadcast_float(values.get(self.metric, 0.0)))
    logging.info("step %d eval (%.1f s): %s%s", int(state.step), time.perf_counter() - t0,
                 " ".join(f"{k} {v:.4g}" for k, v in values.items()),
                 f"; best {self.metric} so far, kept in {self.best.directory}" if kept else "")
    return values

  def close(self) -> None:
    self.best.close()


class _RunOutputs:
  """What a run writes as it trains: metrics rows, progress, sample grids, checkpoints,
  evaluations. Every process saves checkpoints (Orbax coordinates them); only process 0
  (`primary`) writes the other files."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               ckpt: checkpoint.Checkpointer, start: int, total: int, steps_per_epoch: int,
               evaluation_: "_Evaluation | None"):
    self.config, self.workdir, self.ckpt = config, workdir, ckpt
    self.total, self.steps_per_epoch, self.start = total, steps_per_epoch, start
    self.evaluation = evaluation_
    self.primary = parallel.is_primary()
    self.writer = self.progress = None
    if self.primary:
      self.writer = metrics.MetricsWriter(os.path.join(workdir, "metrics.csv"),
                                          resume_step=start,
                                          eval_columns=evaluation_.columns if evaluation_ else ())
      self.sample_dir = os.path.join(workdir, "samples")
      os.makedirs(self.sample_dir, exist_ok=True)
      self.fixed_z = sampling.sample_noise(config.seed, config.num_sample_images, config.nz)
      self.sample_gan = build_gan(config, batch_size=config.num_sample_images)
      self.progress = Progress(start, total)
    self.pending: list[steps.Metrics] = []
    self.timed_steps, self.t0 = 0, time.perf_counter()

  def steps_done(self, done: int, num_steps: int, state: steps.TrainState,
                 step_metrics: steps.Metrics) -> None:
    """Called after each dispatch of num_steps steps with the number of steps done
    (counted on the host, so that nothing waits for the device) and the state after it."""
    c = self.config
    if self.primary:
      self.pending.append(step_metrics)
    if done == self.start + num_steps:  # leave the first dispatch's compilation out of images/s
      jax.block_until_ready(step_metrics)
      self.t0 = time.perf_counter()
    else:
      self.timed_steps += num_steps
    last = done == self.total
    evaluated = {}
    if self.evaluation is not None and self.evaluation.due(done, last):
      jax.block_until_ready(state)  # the steps before it count as training time
      t0 = time.perf_counter()
      evaluated = self.evaluation.run(state)
      self.t0 += time.perf_counter() - t0  # evaluation time is not training time
    if self.primary and (done % c.log_every_steps == 0 or last or evaluated):
      self._log(done, evaluated)
    if self.primary and (done % c.sample_every_steps == 0 or last):
      grid = sampling.generate_uint8(self.sample_gan, parallel.local_copy(state), self.fixed_z,
                                     c.sample_bn_mode)
      sampling.write_grid(os.path.join(self.sample_dir, f"step_{done:07d}.png"), grid)
      if last:
        sampling.write_grid(os.path.join(self.workdir, "samples.png"), grid)
    if done % c.checkpoint_every_steps == 0 or last:
      self.ckpt.save(state)

  def _log(self, done: int, evaluated: dict[str, float]) -> None:
    row = _mean_row(self.pending)
    elapsed = time.perf_counter() - self.t0
    rate = self.timed_steps * self.config.batch_size / elapsed if self.timed_steps else float("nan")
    row.update(step=done, epoch=done / self.steps_per_epoch, seconds=elapsed, images_per_s=rate)
    row.update(evaluated)
    self.writer.write(row)
    self.progress.update(row)
    self.pending, self.timed_steps, self.t0 = [], 0, time.perf_counter()

  def close(self) -> None:
    if self.progress is not None:
      self.progress.close()
    if self.evaluation is not None:
      self.evaluation.close()


def _feed(config: ml_collections.ConfigDict, gan: steps.GAN, data: np.ndarray, start: int,
          total: int, mesh: jax.sharding.Mesh):
  """(dispatch function, prefetcher of (chunk length, its batch argument)) from start to total."""
  batches = input_pipeline.Batches(data, config.batch_size, config.seed)
  intervals = (config.log_every_steps, config.sample_every_steps, config.checkpoint_every_steps)
  if config.evaluator and config.eval_every_steps:
    intervals += (config.eval_every_steps,)
  chunks = input_pipeline.plan_chunks(start, total, config.steps_per_dispatch, intervals)
  split = parallel.batch_sharding(mesh, batch_axis=1)  # chunks are (K, B, ...)
  if config.data_on_device:
    on_device = parallel.global_array(data.shape, parallel.replicated(mesh),
                                      lambda index: data[index])
    run = lambda s, idx: _train_steps_gather(gan, s, on_device, idx)
    make = lambda c: (c[1], parallel.global_array(
        (c[1], config.batch_size), split, batches.chunk_indices(*c).__getitem__))
  else:
    run = lambda s, images: _train_steps(gan, s, images)

    make = lambda c: (c[1], parallel.global_array(  # each process reads its devices' rows
        (c[1], config.batch_size) + data.shape[1:], split,
        lambda index: batches.chunk(*c, rows=index[1])))
  return run, input_pipeline.Prefetcher(make, chunks, config.prefetch_batches)


def _train_loop(config: ml_collections.ConfigDict, workdir: str, gan: steps.GAN,
                state: steps.TrainState, data: np.ndarray, total: int,
                ckpt: checkpoint.Checkpointer, evaluation_: "_Evaluation | None",
                mesh: jax.sharding.Mesh) -> steps.TrainState:
  """Steps from state.step to total, logging, sampling, evaluating and checkpointing."""
  start = int(state.step)
  outputs = _RunOutputs(config, workdir, ckpt, start, total, len(data) // config.batch_size,
                        evaluation_)
  run, prefetcher = _feed(config, gan, data, start, total, mesh)
  done = start
  try:
    for num_steps, batch in prefetcher:
      state, step_metrics = run(state, batch)
      done += num_steps
      outputs.steps_done(done, num_steps, state, step_metrics)
  finally:
    prefetcher.close()
    outputs.close()
  return state


def _make_evaluator(config: ml_collections.ConfigDict, data: np.ndarray
                    ) -> tuple[evaluation.Evaluator | None, float | None]:
  """The run's evaluator (None without one) and the best metric on held-out real images
  (the floor; None where the dataset has no held-out set)."""
  if not config.evaluator or not config.eval_every_steps:
    return None, None
  evaluator, held_out = evaluation.from_config(config, data)
  if held_out is None:
    return evaluator, None
  floor = evaluator.of_images(held_out)
  logging.info("held-out real images (%d) against the reference (%d): %s", len(held_out),
               evaluator.num_real, " ".join(f"{k} {v:.4g}" for k, v in floor.items()))
  name = evaluation.best_metric_name(config)
  return evaluator, floor[name.removeprefix("ema_")]


def _load_images(config: ml_collections.ConfigDict) -> np.ndarray:
  """The training images; with several processes, process 0 first (it builds the cache
  where the others find it on a shared file system; elsewhere each builds its own)."""
  if not parallel.is_primary():
    parallel.sync("dcgan_jax:images")
    return input_pipeline.load_images(config)
  try:
    return input_pipeline.load_images(config)
  finally:  # also on an error, which the others then meet themselves
    parallel.sync("dcgan_jax:images")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> steps.TrainState:
  """Trains (or resumes training) and writes metrics, samples, plots and checkpoints."""
  configuration.validate(config)
  check_workdir(workdir)
  mesh = parallel.make_mesh(config.num_devices)
  parallel.check_batch_size(config.batch_size, mesh)
  data = _load_images(config)
  total = configuration.total_steps(config, len(data))
  gan = build_gan(config, mesh=mesh)
  evaluator, floor = None, None
  if parallel.is_primary():  # before anything is written
    evaluator, floor = _make_evaluator(config, data)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 max_to_keep=config.max_checkpoints_to_keep or None)
  evaluation_ = None
  try:  # closing waits for a checkpoint still being written, also on errors and Ctrl-C
    state = restore_or_init(gan, ckpt, config.seed, mesh)
    start = int(state.step)
    logging.info("%d images %s, %d steps per epoch; %s at step %d of %d", len(data),
                 data.shape[1:], len(data) // config.batch_size,
                 "resuming" if start else "starting", start, total)
    if parallel.is_primary():
      _write_config(config, workdir)
    if start >= total:
      logging.info("nothing to train: the checkpoint is at step %d >= %d", start, total)
      return state
    if config.evaluator and config.eval_every_steps:
      evaluation_ = _Evaluation(config, workdir, evaluator, gan)
    state = _train_loop(config, workdir, gan, state, data, total, ckpt, evaluation_, mesh)
  finally:
    ckpt.close()
  if not parallel.is_primary():
    return state
  csv_path = os.path.join(workdir, "metrics.csv")
  metrics.plot_losses(csv_path, os.path.join(workdir, "losses.png"))
  if evaluation_ is not None:
    metrics.plot_eval(csv_path, os.path.join(workdir, "quality.png"), evaluation_.metric, floor)
  return state
