"""The training loop: data, steps, metrics, samples, checkpoints and resume."""

import json
import os
import shutil
import signal
import socket
import sys
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dcgan_jax import (checkpoint, configuration, evaluation, input_pipeline, metrics, parallel,
                       sampling, steps)
from dcgan_jax.errors import RunError, UsageError
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


_MODEL_FIELDS = ("image_size", "channels", "nz", "ngf", "ndf")


def check_same_model(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a workdir whose checkpoints are of another model, as its config.json tells,
  before any work starts (the checkpoints' own shapes are checked again as they restore)."""
  folder = os.path.join(workdir, "checkpoints")
  has_steps = os.path.isdir(folder) and any(n.isdigit() for n in os.listdir(folder))
  path = os.path.join(workdir, "config.json")
  if not has_steps or not os.path.isfile(path):
    return
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError):
    logging.warning("%s cannot be read; the checkpoints' shapes will be checked", path)
    return
  for field in _MODEL_FIELDS:
    if field in saved and saved[field] != config[field]:
      raise UsageError(f"--workdir={workdir} holds a run trained with config.{field}="
                       f"{saved[field]!r} (its config.json), this config has {config[field]!r}: "
                       "use the run's config to resume it, or another --workdir")


def restore_or_init(gan: steps.GAN, ckpt: checkpoint.Checkpointer, seed: int,
                    mesh: jax.sharding.Mesh) -> tuple[steps.TrainState, dict]:
  """(state, extra) of the newest readable checkpoint, or a freshly initialised state and {};
  replicated over the mesh (a checkpoint written with any number of devices and processes).

  A checkpoint of another model is refused (IncompatibleCheckpoint); damaged ones (files
  that cannot be read back) are moved to `checkpoints_damaged/` beside the checkpoint folder
  when an older checkpoint can be read, and the run resumes from that one. With none
  readable, a RunError names the newest and touches nothing.
  """
  if ckpt.latest_step() is None:
    return steps.init_train_state(gan, seed, parallel.replicated(mesh)), {}
  template = steps.abstract_train_state(gan)
  damaged: list[tuple[int, str]] = []
  for step in reversed(ckpt.all_steps()):
    try:
      ckpt.check_fits(template, step)
      state = ckpt.restore(template, step, sharding=parallel.replicated(mesh))
      extra = ckpt.extra(step)
    except checkpoint.IncompatibleCheckpoint:
      raise  # another model: refused, whatever the checkpoint's age
    except Exception as e:  # pylint: disable=broad-except  # Orbax raises plain Exceptions
      damaged.append((step, checkpoint.root_cause(e)))
      continue
    if damaged:
      _set_aside_damaged(ckpt, [s for s, _ in damaged])
      logging.warning("checkpoint step %d cannot be read (%s); moved to %s_damaged; resuming "
                      "from step %d", damaged[0][0], damaged[0][1], ckpt.directory, step)
    return state, extra
  step, why = damaged[0]
  raise RunError(f"no checkpoint in {ckpt.directory} can be read (the newest, step {step}: "
                 f"{why}); move that folder away to start the run again")


def _set_aside_damaged(ckpt: checkpoint.Checkpointer, damaged_steps: list[int]) -> None:
  """Moves damaged step folders to <checkpoints>_damaged/ (process 0), so that the run can
  save those steps again; nothing is deleted."""
  if parallel.is_primary():
    for step in damaged_steps:
      target = os.path.join(f"{ckpt.directory}_damaged", str(step))
      if os.path.exists(target):
        target = f"{target}.{time.strftime('%Y%m%d-%H%M%S')}"
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(os.path.join(ckpt.directory, str(step)), target)
  parallel.sync("dcgan_jax:damaged_checkpoints")
  ckpt.reload()


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


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """workdir/config.json, written atomically."""
  path = os.path.join(workdir, "config.json")
  with open(f"{path}.tmp", "w") as f:
    json.dump(config.to_dict(), f, indent=2, sort_keys=True)
  os.replace(f"{path}.tmp", path)


def _per_step(pending: list[steps.Metrics]) -> dict[str, np.ndarray]:
  """The pending dispatches' metrics (each (K,) per dispatch) as one float32 array per metric,
  a value per step, in step order."""
  stacked = jax.device_get(parallel.local_copy(pending))
  return {k: np.concatenate([np.ravel(m[k]) for m in stacked]) for k in stacked[0]}


def _mean_row(pending: list[steps.Metrics]) -> dict[str, float]:
  """Means over every step of the pending dispatches."""
  return {k: float(np.mean(v)) for k, v in _per_step(pending).items()}


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves))


class _StopRequest:
  """SIGTERM or SIGINT during training asks the loop to stop after the current dispatch (a
  second Ctrl-C interrupts at once). Handlers are installed only in the main thread."""

  def __init__(self):
    self.signal_name: str | None = None
    self._old = {}

  def __enter__(self) -> "_StopRequest":
    if threading.current_thread() is threading.main_thread():
      self._old = {sig: signal.signal(sig, self._handle)
                   for sig in (signal.SIGTERM, signal.SIGINT)}
    return self

  def _handle(self, signum, frame) -> None:  # pylint: disable=unused-argument
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name

  def requested(self, done: int, log_every: int) -> bool:
    """Whether to stop now; with several processes all agree, at logged steps only."""
    if jax.process_count() == 1:
      return self.signal_name is not None
    return done % log_every == 0 and parallel.any_process(self.signal_name is not None)

  def __exit__(self, *exc) -> None:
    for sig, handler in self._old.items():
      signal.signal(sig, handler)


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
               ckpt: checkpoint.Checkpointer, start: int, total: int, num_images: int,
               evaluation_: "_Evaluation | None", pending: dict[str, list[float]]):
    self.config, self.workdir, self.ckpt = config, workdir, ckpt
    self.total, self.start, self.num_images = total, start, num_images
    self.steps_per_epoch = num_images // config.batch_size
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
    # Metrics of the steps since the last row; a resumed run starts with the checkpoint's.
    self.pending: list[steps.Metrics] = (
        [{k: np.asarray(v, np.float32) for k, v in pending.items()}] if pending else [])
    self.timed_steps, self.t0 = 0, time.perf_counter()

  def steps_done(self, done: int, num_steps: int, state: steps.TrainState,
                 step_metrics: steps.Metrics) -> None:
    """Called after each dispatch of num_steps steps with the number of steps done
    (counted on the host, so that nothing waits for the device) and the state after it."""
    c = self.config
    self.pending.append(step_metrics)
    if done == self.start + num_steps:  # leave the first dispatch's compilation out of images/s
      jax.block_until_ready(step_metrics)
      self.t0 = time.perf_counter()
    else:
      self.timed_steps += num_steps
    last = done == self.total
    due_checkpoint = done % c.checkpoint_every_steps == 0 or last
    due_log = done % c.log_every_steps == 0 or last
    due_sample = done % c.sample_every_steps == 0 or last
    due_eval = self.evaluation is not None and self.evaluation.due(done, last)
    if due_checkpoint or due_log or due_sample or due_eval:
      self.check_finite(done, state)  # before anything of this state is written
    evaluated = {}
    if due_eval:
      jax.block_until_ready(state)  # the steps before it count as training time
      t0 = time.perf_counter()
      evaluated = self.evaluation.run(state)
      self.t0 += time.perf_counter() - t0  # evaluation time is not training time
    if due_log or evaluated:
      self._log(done, evaluated)
    if self.primary and due_sample:
      grid = sampling.generate_uint8(self.sample_gan, parallel.local_copy(state), self.fixed_z,
                                     c.sample_bn_mode)
      sampling.write_grid(os.path.join(self.sample_dir, f"step_{done:07d}.png"), grid)
      if last:
        sampling.write_grid(os.path.join(self.workdir, "samples.png"), grid)
    if due_checkpoint:
      self.save(state)

  def save(self, state: steps.TrainState) -> bool:
    """A checkpoint of state, with what the rows to come need: the metrics of the steps since
    the last row, and the number of images (which fixes the data order)."""
    pending = {k: v.tolist() for k, v in _per_step(self.pending).items()} if self.pending else {}
    return self.ckpt.save(state, extra={"pending": pending, "num_images": self.num_images})

  def check_finite(self, done: int, state: steps.TrainState) -> None:
    """Raises RunError naming the first step whose metrics, or the state, are not finite."""
    if self.pending:
      values = _per_step(self.pending)
      n = len(next(iter(values.values())))
      for i in range(n):
        bad = sorted((k for k, v in values.items() if not np.isfinite(v[i])),
                     key=lambda k: (not k.startswith("loss"), k))  # a loss first
        if bad:
          self._diverged(done - n + 1 + i, f"{bad[0]} is {values[bad[0]][i]}")
    if not bool(parallel.local_copy(_all_finite(state))):
      self._diverged(done, "the parameters or optimizer state are not finite")

  def _diverged(self, step: int, what: str) -> None:
    latest = self.ckpt.latest_step()
    kept = (f"the last good checkpoint, step {latest}, is kept in {self.ckpt.directory}"
            if latest is not None else "no checkpoint was written yet")
    raise RunError(f"training diverged at step {step}: {what}; nothing of it was saved and "
                   f"{kept} (lower the learning rates or set config.label_smoothing)")

  def stop(self, done: int, state: steps.TrainState, why: str) -> None:
    """Ends the run early on a signal, with a checkpoint at the current step."""
    self.check_finite(done, state)
    self.save(state)
    logging.info("stopped by %s after step %d; its checkpoint is in %s: run the same command "
                 "to resume", why, done, self.ckpt.directory)

  def _log(self, done: int, evaluated: dict[str, float]) -> None:
    if self.primary:
      row = _mean_row(self.pending)
      elapsed = time.perf_counter() - self.t0
      rate = (self.timed_steps * self.config.batch_size / elapsed if self.timed_steps
              else float("nan"))
      row.update(step=done, epoch=done / self.steps_per_epoch, seconds=elapsed,
                 images_per_s=rate)
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
                mesh: jax.sharding.Mesh, extra: dict) -> steps.TrainState:
  """Steps from state.step to total, logging, sampling, evaluating and checkpointing; on
  SIGTERM or SIGINT, up to the end of the current dispatch and a checkpoint there."""
  start = int(state.step)
  outputs = _RunOutputs(config, workdir, ckpt, start, total, len(data), evaluation_,
                        extra.get("pending", {}))
  run, prefetcher = _feed(config, gan, data, start, total, mesh)
  done = start
  try:
    with _StopRequest() as stop:
      for num_steps, batch in prefetcher:
        state, step_metrics = run(state, batch)
        done += num_steps
        outputs.steps_done(done, num_steps, state, step_metrics)
        if done < total and stop.requested(done, config.log_every_steps):
          outputs.stop(done, state, stop.signal_name or "a signal to another process")
          break
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
  check_same_model(config, workdir)
  mesh = parallel.make_mesh(config.num_devices)
  parallel.check_batch_size(config.batch_size, mesh)
  data = _load_images(config)
  total = configuration.total_steps(config, len(data))
  check_workdir(workdir)  # the first write, once every check has passed
  gan = build_gan(config, mesh=mesh)
  evaluator, floor = None, None
  if parallel.is_primary():  # before anything is written
    evaluator, floor = _make_evaluator(config, data)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 max_to_keep=config.max_checkpoints_to_keep or None)
  evaluation_ = None
  try:  # closing waits for a checkpoint still being written, also on errors and Ctrl-C
    restored = ckpt.latest_step() is not None
    state, extra = restore_or_init(gan, ckpt, config.seed, mesh)
    start = int(state.step)
    if extra.get("num_images", len(data)) != len(data):
      raise UsageError(
          f"the dataset now has {len(data)} images; the run in {workdir} was trained on "
          f"{extra['num_images']}, and the data order depends on it: restore the dataset or "
          "use another --workdir")
    logging.info("%d images %s, %d steps per epoch; %s at step %d of %d", len(data),
                 data.shape[1:], len(data) // config.batch_size,
                 "resuming" if restored else "starting", start, total)
    if parallel.is_primary():
      write_config(config, workdir)
    if start >= total:
      logging.info("nothing to train: the checkpoint is at step %d >= %d", start, total)
      return state
    if config.evaluator and config.eval_every_steps:
      evaluation_ = _Evaluation(config, workdir, evaluator, gan)
    state = _train_loop(config, workdir, gan, state, data, total, ckpt, evaluation_, mesh,
                        extra)
  finally:
    ckpt.close()
  if not parallel.is_primary():
    return state
  csv_path = os.path.join(workdir, "metrics.csv")
  metrics.plot_losses(csv_path, os.path.join(workdir, "losses.png"))
  if evaluation_ is not None:
    metrics.plot_eval(csv_path, os.path.join(workdir, "quality.png"), evaluation_.metric, floor)
  return state
