"""train_and_evaluate: data, steps, metrics rows, sample grids, evaluation, checkpoints and
resume; every periodic action of the loop is in `_train`, in the order it happens."""

import os
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dcgan_jax import (checkpoint, configuration, device, evaluation, images, init_from,
                       input_pipeline, metrics, parallel, run_summary, sampling, steps,
                       summaries)
from dcgan_jax import workdir as workdir_lib
from dcgan_jax.errors import DivergedError, UsageError

# K iterations per dispatch (lax.scan); the state's buffers are reused in place.
_train_steps = jax.jit(steps.train_steps, static_argnums=0, donate_argnums=1)
_train_steps_gather = jax.jit(steps.train_steps_gather, static_argnums=0, donate_argnums=1)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> steps.TrainState:
  """Trains (or resumes training) and writes metrics, samples, plots and checkpoints."""
  configuration.validate(config)
  in_effect = device.set_deterministic(config.deterministic)  # before JAX starts its backends
  notes = ()
  if in_effect != config.deterministic:  # JAX ran on the GPU already: the run records its own
    notes = (f"config.deterministic={config.deterministic} could not take effect (JAX already "
             f"ran on the GPU): this run trained with {in_effect}, as its config.json says",)
    config = ml_collections.ConfigDict(config.to_dict())
    config.deterministic = in_effect
  workdir_lib.check_same_gan(config, workdir)
  mesh = parallel.make_mesh(config.num_devices)
  parallel.check_batch_size(config.batch_size, mesh)
  source = None
  if config.init_from and not checkpoint.step_numbers(workdir_lib.checkpoint_dir(workdir)):
    source = init_from.load_source(config, workdir)  # a new run: its networks, checked
  dataset = _load_dataset(config)
  data = dataset.images
  if config.conditional:  # the classes' count was checked before the images were decoded
    workdir_lib.check_same_classes(workdir, dataset.class_names, config.max_classes)
  total = configuration.total_steps(config, len(data))
  gan = steps.gan_from_config(config, mesh, len(dataset.class_names))
  if source is not None:
    init_from.check(config, gan, source)
  workdir_lib.check_writable(workdir)  # the first write, once every check has passed
  logging.info("training on %s%s", device.describe(),  # bad input is one line: said after it
               "" if config.deterministic else " (config.deterministic False: fastest kernels)")
  warning = device.cpu_build_warning()
  if warning:
    logging.warning("%s", warning)
  init_compiled = _compile_init_meanwhile(gan, mesh, workdir)
  evaluator = None
  try:
    if evaluation.enabled(config):  # built before anything is written: it can fail
      evaluator = evaluation.DuringTraining(config, data, gan, workdir, dataset.class_names)
  finally:
    if init_compiled is not None:
      init_compiled.join()
  ckpt = checkpoint.Checkpointer(workdir_lib.checkpoint_dir(workdir),
                                 max_to_keep=config.max_checkpoints_to_keep or None)
  t0 = time.perf_counter()
  try:  # closing waits for a checkpoint still being written, also on errors and Ctrl-C
    restored = ckpt.latest_step() is not None
    with device.out_of_memory_as_usage_error(
        f"creating the training state ({config.image_size}x{config.image_size}x"
        f"{config.channels}, ngf {config.ngf}, ndf {config.ndf})",
        "config.ngf and config.ndf, or config.image_size"):
      state, extra = checkpoint.restore_or_init(ckpt, gan, config.seed,
                                                parallel.replicated(mesh))
    if source is not None and not restored:
      state = _start_from(config, gan, state, source, workdir)
    start = int(state.step)
    _check_dataset_size(extra, len(data), workdir)
    logging.info("%d images %s, %d steps per epoch; %s at step %d of %d", len(data),
                 data.shape[1:], len(data) // configuration.images_per_step(config),
                 "resuming" if restored else "starting", start, total)
    if parallel.is_primary():
      workdir_lib.record_config(config, workdir, start)
      if config.conditional:
        workdir_lib.write_classes(workdir, dataset.class_names)
    origin = init_from.read_record(workdir)
    notes += (origin.line(),) if origin is not None else ()
    if start >= total:
      logging.info("nothing to train: the checkpoint is at step %d >= %d", start, total)
      return state
    state, ended = _train(config, workdir, gan, state, dataset, total, ckpt, evaluator, mesh,
                          extra)
  except DivergedError:  # say what the workdir holds, then the error
    if parallel.is_primary():
      _log_summary(workdir, "diverged (nothing after the latest checkpoint was kept)", start,
                   ckpt.latest_step() or start, total, time.perf_counter() - t0, evaluator,
                   notes)
    raise
  finally:
    ckpt.close()
    if evaluator is not None:
      evaluator.close()
  if parallel.is_primary():
    csv_path = os.path.join(workdir, "metrics.csv")
    metrics.plot_losses(csv_path, os.path.join(workdir, "losses.png"))
    if evaluator is not None:
      metrics.plot_eval(csv_path, os.path.join(workdir, "quality.png"), evaluator.metric,
                        evaluator.floor)
    _log_summary(workdir, ended, start, int(state.step), total, time.perf_counter() - t0,
                 evaluator, notes)
  return state


def _start_from(config: ml_collections.ConfigDict, gan: steps.GAN, state: steps.TrainState,
                source: init_from.Source, workdir: str) -> steps.TrainState:
  """A new run's fresh state with config.init_from's networks in it; where it started is
  logged and kept in WORKDIR/init_from.json."""
  state, origin = init_from.start(config, gan, state, source)
  logging.info("%s", origin.line())
  if parallel.is_primary():
    init_from.write_record(workdir, origin)
  return state


def _compile_init_meanwhile(gan: steps.GAN, mesh: jax.sharding.Mesh,
                            workdir: str) -> threading.Thread | None:
  """Compiles a new run's initialisation in a thread while the evaluator measures the real
  images (XLA compiles outside the GIL): on 2 CPU cores the first row comes seconds sooner. A
  workdir with checkpoints restores instead; a failure here is met again, and said, when
  init_train_state compiles the program itself."""
  def compile_init():
    try:
      steps.compile_init(gan, parallel.replicated(mesh))
    except Exception:  # pylint: disable=broad-except
      pass
  try:
    if checkpoint.step_numbers(workdir_lib.checkpoint_dir(workdir)):
      return None
  except OSError:  # restoring says what is wrong with the folder
    return None
  thread = threading.Thread(target=compile_init, name="compile_init")
  thread.start()
  return thread


def _log_summary(workdir: str, ended: str, start: int, done: int, total: int, seconds: float,
                 evaluator: "evaluation.DuringTraining | None", notes: tuple[str, ...]) -> None:
  """Logs run_summary.summary: how the run ended, its quality, files and next commands."""
  logging.info("%s", run_summary.summary(workdir, ended, start, done, total, seconds,
                                         evaluator.metric if evaluator is not None else None,
                                         notes))


def _train(config: ml_collections.ConfigDict, workdir: str, gan: steps.GAN,
           state: steps.TrainState, dataset: input_pipeline.Dataset, total: int,
           ckpt: checkpoint.Checkpointer, evaluator: "evaluation.DuringTraining | None",
           mesh: jax.sharding.Mesh, extra: dict) -> tuple[steps.TrainState, str]:
  """Trains from state.step to total; returns the state and how it ended ('finished' or
  'stopped by SIGTERM', ...). After each dispatch, in this order: the finite check (before
  anything of the state is written), evaluation, the metrics row, the sample grid, the
  checkpoint, and the stop request (SIGTERM or SIGINT: a checkpoint, then stop)."""
  start = done = int(state.step)
  data = dataset.images
  rows = _Rows(config, workdir, start, total, len(data),
               evaluator.columns if evaluator is not None else [], extra.get("pending", {}),
               ["d_penalty"] if gan.has_penalty else [])
  grid = sampling.grid_noise(config.seed, config.num_sample_images, config.nz,
                             tuple(range(gan.num_classes)))
  eval_every = config.eval_every_steps if evaluator is not None else 0
  board = _open_board(config, workdir, start)
  run, prefetcher = _feed(config, gan, dataset, start, total, mesh)

  def due(every: int) -> bool:
    return every > 0 and (done % every == 0 or done == total)

  ended = "finished"

  def save() -> None:
    ckpt.save(state, extra={"pending": rows.pending_per_step(), "num_images": len(data)})

  shape = f"{config.image_size}x{config.image_size}x{config.channels}"
  doing = [""]  # what the device does now, for an out-of-memory error's line
  try:
    with _StopRequest() as stop, device.out_of_memory_as_usage_error(
        lambda: doing[0], f"config.batch_size (now {config.batch_size}), or config.image_size, "
        "ngf and ndf (config.compute_dtype='bfloat16' halves the activations)"):
      for num_steps, batch in prefetcher:
        doing[0] = (f"at training step {done + 1} (config.batch_size {config.batch_size} of "
                    f"{shape} images, {num_steps} step{'s' * (num_steps != 1)} per call)")
        state, step_metrics = run(state, batch)
        done += num_steps
        rows.add(step_metrics, num_steps, done)
        if any(due(every) for every in (config.log_every_steps, config.sample_every_steps,
                                        config.checkpoint_every_steps, eval_every)):
          rows.check_finite(done, state, ckpt)
        evaluated = {}
        if due(eval_every):
          doing[0] = (f"evaluating step {done} ({config.eval_num_samples} samples generated "
                      f"in batches of config.batch_size {config.batch_size})")
          evaluated = rows.untimed(evaluator.run, state)
        if due(config.log_every_steps) or evaluated:
          row = rows.write(done, evaluated)
          if board is not None:
            board.scalars(done, {k: v for k, v in row.items() if k != "step"})
            board.flush()
        if due(config.sample_every_steps) and parallel.is_primary():
          picture = _write_grid(workdir, gan, state, grid, config.sample_bn_mode, done,
                                done == total)
          if board is not None:
            board.image(done, "samples", picture)
        if due(config.checkpoint_every_steps):
          save()
        if done < total and stop.requested(done, config.log_every_steps):
          rows.check_finite(done, state, ckpt)
          save()
          ended = f"stopped by {stop.signal_name or 'a signal to another process'}"
          logging.info("%s after step %d; its checkpoint is in %s: run the same command to "
                       "resume", ended, done, ckpt.directory)
          break
  finally:
    prefetcher.close()
    rows.close()
    if board is not None:
      board.close()
  return state, ended


def _open_board(config: ml_collections.ConfigDict, workdir: str, start: int
                ) -> "summaries.EventWriter | None":
  """Opens the run's TensorBoard event file (process 0, with config.tensorboard) and writes the
  config; a resumed run has TensorBoard drop what was written past its checkpoint."""
  if not config.tensorboard or not parallel.is_primary():
    return None
  board = summaries.EventWriter(os.path.join(workdir, "tensorboard"),
                                purge_from_step=start + 1 if start else None)
  board.text(start, "config", summaries.config_markdown(config.to_dict()))
  return board


def _write_grid(workdir: str, gan: steps.GAN, state: steps.TrainState,
                grid: "sampling.GridNoise", bn_mode: str, step: int, last: bool) -> np.ndarray:
  """Writes the fixed-noise grid of a step to samples/ (and, at the end, to samples.png);
  returns it (H, W, C)."""
  generated = sampling.generate_images(gan, parallel.local_copy(state), grid.z, len(grid.z),
                                       bn_mode, labels_N=grid.labels)
  picture = images.make_grid(generated, ncols=grid.ncols)
  os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
  images.save_png(os.path.join(workdir, "samples", f"step_{step:07d}.png"), picture)
  if last:
    images.save_png(os.path.join(workdir, "samples.png"), picture)
  return picture


def _check_dataset_size(extra: dict, num_images: int, workdir: str) -> None:
  """Refuses to resume on a dataset of another size: the data order depends on it."""
  if extra.get("num_images", num_images) != num_images:
    raise UsageError(
        f"the dataset now has {num_images} images; the run in {workdir} was trained on "
        f"{extra['num_images']}, and the data order depends on it: restore the dataset or "
        "use another --workdir")


class _Rows:
  """The metrics rows of a run: the metrics of the steps since the last row, the training
  time (compilation and evaluation left out), metrics.csv and the progress display (process 0
  writes them), and the finite check of what is about to be written."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, start: int, total: int,
               num_images: int, eval_columns: list[str], pending: dict[str, list[float]],
               train_columns: list[str]):
    self.config, self.start = config, start
    self.images_per_step = configuration.images_per_step(config)
    self.steps_per_epoch = num_images // self.images_per_step
    self.primary = parallel.is_primary()
    self.writer = self.progress = None
    if self.primary:
      self.writer = metrics.MetricsWriter(os.path.join(workdir, "metrics.csv"),
                                          resume_step=start, eval_columns=eval_columns,
                                          train_columns=train_columns)
      self.progress = Progress(start, total)
    # A resumed run starts with the metrics its checkpoint kept.
    self.pending: list[tuple[steps.Metrics, int]] = (
        [({k: np.asarray(v, np.float32) for k, v in pending.items()},
          len(next(iter(pending.values()))))] if pending else [])
    self.timed_steps, self.t0 = 0, time.perf_counter()

  def add(self, step_metrics: steps.Metrics, num_steps: int, done: int) -> None:
    """Takes a dispatch's metrics (of its first num_steps steps: a shorter chunk's are padded),
    after `done` steps (counted on the host: nothing waits for the device, except after the
    first dispatch, whose compilation is not timed)."""
    self.pending.append((step_metrics, num_steps))
    if done == self.start + num_steps:
      jax.block_until_ready(step_metrics)
      self.t0 = time.perf_counter()
    else:
      self.timed_steps += num_steps

  def untimed(self, fn, state: steps.TrainState):
    """Calls fn(state) with its time left out of the training time."""
    jax.block_until_ready(state)  # the steps before it count as training time
    t0 = time.perf_counter()
    try:
      return fn(state)
    finally:
      self.t0 += time.perf_counter() - t0

  def pending_per_step(self) -> dict[str, list[float]]:
    """Returns the metrics of the steps since the last row, a list per metric (for a checkpoint)."""
    return {k: v.tolist() for k, v in _per_step(self.pending).items()} if self.pending else {}

  def check_finite(self, done: int, state: steps.TrainState,
                   ckpt: checkpoint.Checkpointer) -> None:
    """Raises DivergedError naming the first step whose metrics, or the state, are not finite."""
    if self.pending:
      values = _per_step(self.pending)
      n = len(next(iter(values.values())))
      for i in range(n):
        bad = sorted((k for k, v in values.items() if not np.isfinite(v[i])),
                     key=lambda k: (not k.startswith("loss"), k))  # a loss first
        if bad:
          _diverged(ckpt, done - n + 1 + i, f"{bad[0]} is {values[bad[0]][i]}")
    if not bool(parallel.local_copy(_all_finite(state))):
      _diverged(ckpt, done, "the parameters or optimizer state are not finite")

  def write(self, done: int, evaluated: dict[str, float]) -> dict[str, float]:
    """Writes the row of step `done` (the means since the last row, the rate, evaluated) and
    returns it ({} outside process 0)."""
    row = {}
    if self.primary:
      row = _mean_row(self.pending)
      elapsed = time.perf_counter() - self.t0
      rate = (self.timed_steps * self.images_per_step / elapsed if self.timed_steps
              else float("nan"))
      row.update(step=done, epoch=done / self.steps_per_epoch, seconds=elapsed,
                 images_per_s=rate)
      row.update(evaluated)
      self.writer.write(row)
      self.progress.update(row)
    self.pending, self.timed_steps, self.t0 = [], 0, time.perf_counter()
    return row

  def close(self) -> None:
    if self.progress is not None:
      self.progress.close()


def _diverged(ckpt: checkpoint.Checkpointer, step: int, what: str) -> None:
  latest = ckpt.latest_step()
  kept = (f"the last good checkpoint, step {latest}, is kept in {ckpt.directory}"
          if latest is not None else "no checkpoint was written yet")
  raise DivergedError(f"training diverged at step {step}: {what}; nothing of it was saved and "
                 f"{kept} (lower the learning rates or set config.label_smoothing)")


def _feed(config: ml_collections.ConfigDict, gan: steps.GAN, dataset: input_pipeline.Dataset,
          start: int, total: int, mesh: jax.sharding.Mesh):
  """Returns the dispatch function and a prefetcher of (chunk length, its arguments) from step
  start to total: batches of images (and of their labels, for a conditional GAN), or of
  indices into a dataset on the device, and the step count of a shorter chunk."""
  per_step = configuration.images_per_step(config)
  data = dataset.images
  labels = dataset.labels if gan.num_classes else None
  batches = input_pipeline.Batches(data, per_step, config.seed, labels)
  intervals = (config.log_every_steps, config.sample_every_steps, config.checkpoint_every_steps)
  if evaluation.enabled(config):
    intervals += (config.eval_every_steps,)
  most = config.steps_per_dispatch
  chunks = input_pipeline.plan_chunks(start, total, most, intervals)
  split = parallel.batch_sharding(mesh, batch_axis=1)  # chunks are (K, B, ...)

  def count(k: int) -> jax.Array | None:
    """None for a chunk of `most` steps (the scan of that many); else k, for a shorter chunk,
    padded to `most` batches: all of them run in one program (train_steps' num_steps)."""
    if k == most:
      return None
    return parallel.global_array((), parallel.replicated(mesh), lambda index: np.int32(k))

  if config.data_on_device:
    def dataset_part(index):  # every device holds the whole dataset
      return data[index]

    on_device = parallel.global_array(data.shape, parallel.replicated(mesh), dataset_part)
    labels_on_device = None if labels is None else parallel.global_array(
        labels.shape, parallel.replicated(mesh), lambda index: labels[index])

    def run_gathered(state, fed):
      indices_KxB, num_steps = fed
      return _train_steps_gather(gan, state, on_device, indices_KxB, num_steps,
                                 labels_on_device)

    def indices(chunk: tuple[int, int]):
      first, k = chunk
      read = batches.chunk_indices(first, k, most).__getitem__
      return k, (parallel.global_array((most, per_step), split, read), count(k))

    return run_gathered, input_pipeline.Prefetcher(indices, chunks, config.prefetch_batches)

  def run(state, fed):
    images_KxBxSxSxC, num_steps, labels_KxB = fed
    return _train_steps(gan, state, images_KxBxSxSxC, num_steps, labels_KxB)

  def images(chunk: tuple[int, int]):
    first, k = chunk

    def rows(index):  # each process reads its own devices' rows
      return batches.chunk(first, k, rows=index[1], length=most)

    def label_rows(index):
      return batches.chunk_labels(first, k, rows=index[1], length=most)

    chunk_labels = None if labels is None else parallel.global_array(
        (most, per_step), split, label_rows)
    return k, (parallel.global_array((most, per_step) + data.shape[1:], split, rows), count(k),
               chunk_labels)

  return run, input_pipeline.Prefetcher(images, chunks, config.prefetch_batches)


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


def _per_step(pending: list[tuple[steps.Metrics, int]]) -> dict[str, np.ndarray]:
  """Returns the pending dispatches' metrics (each (K,) per dispatch, of which the first count
  are steps) as one float32 array per metric, a value per step, in step order."""
  stacked = jax.device_get(parallel.local_copy([m for m, _ in pending]))
  counts = [n for _, n in pending]
  return {k: np.concatenate([np.ravel(np.asarray(m[k])[:n]) for m, n in zip(stacked, counts)])
          for k in stacked[0]}


def _mean_row(pending: list[tuple[steps.Metrics, int]]) -> dict[str, float]:
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
    """Tells whether to stop now; with several processes all agree, at logged steps only."""
    if jax.process_count() == 1:
      return self.signal_name is not None
    return done % log_every == 0 and parallel.any_process(self.signal_name is not None)

  def __exit__(self, *exc) -> None:
    for sig, handler in self._old.items():
      signal.signal(sig, handler)


def _load_dataset(config: ml_collections.ConfigDict) -> input_pipeline.Dataset:
  """Returns the training images (and, for a conditional run, their labels and class names);
  with several processes, process 0 first (it builds the cache where the others find it on a
  shared file system; elsewhere each builds its own)."""
  if not parallel.is_primary():
    parallel.sync("dcgan_jax:images")
    return input_pipeline.load_dataset(config, config.conditional)
  try:
    return input_pipeline.load_dataset(config, config.conditional)
  finally:  # also on an error, which the others then meet themselves
    parallel.sync("dcgan_jax:images")


