"""Thin wrappers over Orbax's CheckpointManager: the latest checkpoints of a run, and the
best one by an evaluation metric, kept apart.

A checkpoint holds two items, committed together (Orbax writes a step into a temporary
folder and renames it when complete, so a step folder is whole or absent): `default`, the
TrainState, and `extra`, a JSON dict of what else the run's future depends on (e.g. the
metrics of steps not yet written as a row). Checkpoints from before `extra` existed restore
with an empty one.
"""

import contextlib
import dataclasses
import glob
import logging
import math
import os
import re
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from dcgan_jax import errors, parallel, steps
from dcgan_jax.errors import RunError, UsageError
from dcgan_jax.steps import TrainState


class CorruptCheckpoint(RunError):
  """A checkpoint whose files cannot be read back."""


class IncompatibleCheckpoint(UsageError):
  """A readable checkpoint of another model (different shapes or fields)."""


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  """Returns {'g_params/UpConv_2/kernel': shape, ...} of a pytree of arrays or array metadata."""
  def name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)
  return {name(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def root_cause(e: BaseException) -> str:
  """Returns the first line of the innermost exception behind e (Orbax wraps TensorStore's)."""
  while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
    e = e.__cause__ or e.__context__
  text = str(e).strip()
  return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


def _is_closed_loop_report(value: BaseException | None) -> bool:
  return isinstance(value, RuntimeError) and "Event loop is closed" in str(value)


def _is_failed_read(value: BaseException | None) -> bool:
  """Tells whether an error is a TensorStore read that failed (its errors carry the spec read)."""
  text = str(value) if value is not None else ""
  return "tensorstore_spec" in text and ("Error reading" in text or "Error opening" in text)


class UnretrievedFailedReads(logging.Filter):
  """Drops asyncio's "exception was never retrieved" reports of failed TensorStore reads and
  writes: the restore's (or save's) sibling operations, whose failure Orbax already raised
  through another one."""

  def filter(self, record: logging.LogRecord) -> bool:
    # "Task", "Future" or "_GatheringFuture exception was never retrieved"
    unretrieved = "exception was never retrieved" in record.getMessage()
    failure = record.exc_info[1] if record.exc_info else None
    return not (unretrieved and (_is_failed_read(failure) or write_errno(failure) is not None))


_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def write_errno(e: BaseException | None) -> int | None:
  """The errno of a failed write behind e (an OSError, or TensorStore's os_error_code in the
  messages Orbax wraps it in); None for any other error."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno:
      return e.errno
    found = _OS_ERROR_CODE.search(str(e))
    if found:
      return int(found.group(1))
    e = e.__cause__ or e.__context__
  return None


class FailedWriteReports(logging.Filter):
  """Drops what Orbax's background threads log, with tracebacks, of a checkpoint write that
  failed (a full disk): the run reports it once, in one line (Checkpointer.save and close)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR or "orbax" not in record.pathname:
      return True
    return write_errno(record.exc_info[1] if record.exc_info else None) is None and \
        _OS_ERROR_CODE.search(record.getMessage()) is None


def silence_failed_read_reports() -> None:
  """Silences, for the rest of the process, what a failed Orbax restore leaves on stderr:
  TensorStore callbacks into the restore's closed event loop, its abandoned read
  coroutines, and its failed sibling reads that nothing awaited, each reported with a
  traceback although the failure itself was raised and handled; and, likewise, what Orbax's
  threads log of a checkpoint write that failed (Checkpointer reports it in one line).
  Everything else is reported as before."""
  logging.getLogger("asyncio").addFilter(UnretrievedFailedReads())
  absl_logging.get_absl_handler().addFilter(FailedWriteReports())
  unraisable_hook, excepthook = sys.unraisablehook, sys.excepthook

  def unraisable(report) -> None:
    if _is_closed_loop_report(report.exc_value) or "orbax" in repr(
        getattr(report.object, "cr_code", report.object)):
      return
    unraisable_hook(report)

  def uncaught(kind, value, traceback) -> None:
    if not _is_closed_loop_report(value):
      excepthook(kind, value, traceback)

  sys.unraisablehook, sys.excepthook = unraisable, uncaught


def _handlers() -> dict:
  return {"default": ocp.StandardCheckpointHandler(), "extra": ocp.JsonCheckpointHandler()}


class Checkpointer:
  """Checkpoints of a TrainState under `directory`, one subfolder per step."""

  def __init__(self, directory: str, max_to_keep: int | None = 3, create: bool = True,
               options: dict | None = None):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory, item_handlers=_handlers(),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                             cleanup_tmp_directories=create,
                                             **(options or {})))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def reload(self) -> None:
    """Reads the folder's steps again (after steps were moved away)."""
    self._manager.reload()

  def save(self, state: TrainState, metrics: dict[str, float] | None = None,
           extra: dict | None = None) -> bool:
    """Saves state (and the JSON dict `extra`) at state.step unless a checkpoint of that or
    a later step exists.

    A newer checkpoint is never replaced by an older state; returns whether it saved.
    """
    step = int(state.step)
    latest = self.latest_step()
    if latest is not None and step <= latest:
      return False
    args = ocp.args.Composite(default=ocp.args.StandardSave(state),
                              extra=ocp.args.JsonSave(extra or {}))
    try:  # Orbax waits here for the previous save, whose failure it raises here too
      return bool(self._manager.save(step, args=args, metrics=metrics))
    except Exception as e:  # pylint: disable=broad-except  # a failed write becomes one line
      self._raise_write_failure(e)
      raise

  def _raise_write_failure(self, e: BaseException) -> None:
    """Raises RunError for a failed checkpoint write (naming its folder and errno), after
    removing what it left half written; returns for any other error."""
    number = write_errno(e)
    if number is None:
      return
    partial = sorted(glob.glob(os.path.join(self.directory, "*.orbax-checkpoint-tmp*")))
    for folder in partial:
      shutil.rmtree(folder, ignore_errors=True)
    latest = self.latest_step()
    kept = (f"the newest complete checkpoint, step {latest}, is kept" if latest is not None
            else "no checkpoint was complete yet")
    raise RunError(errors.write_failure(partial[0] if partial else self.directory, None, number,
                                        kept)) from None

  def _restore(self, step: int, abstract):
    return self._manager.restore(
        step, args=ocp.args.Composite(default=ocp.args.StandardRestore(abstract)))["default"]

  def extra(self, step: int) -> dict:
    """Returns the JSON dict saved with `step` ({} for checkpoints written without one)."""
    if not os.path.isdir(os.path.join(self.directory, str(step), "extra")):
      return {}
    try:
      found = self._manager.restore(step, args=ocp.args.Composite(extra=ocp.args.JsonRestore()))
    except (ValueError, OSError) as e:
      raise CorruptCheckpoint(f"{self.directory}/{step}/extra cannot be read ({e})") from e
    return dict(found["extra"] or {})

  def check_fits(self, template: TrainState, step: int) -> None:
    """Compares the shapes stored with `step` against template's, reading no array data.

    Raises IncompatibleCheckpoint naming the first differing entry, or CorruptCheckpoint
    when the checkpoint's metadata cannot be read. The generator EMA may differ (restore
    handles it).
    """
    try:
      stored = self._manager.item_metadata(step)["default"]
      stored = dict(getattr(stored, "tree", stored))
    except Exception as e:  # pylint: disable=broad-except  # any unreadable metadata
      raise CorruptCheckpoint(f"its metadata cannot be read ({root_cause(e)})") from e
    expected = {f.name: getattr(template, f.name) for f in dataclasses.fields(template)}
    stored.pop("g_ema_params", None)
    expected.pop("g_ema_params", None)
    have, want = _shapes(stored), _shapes(expected)
    for key in sorted(set(have) | set(want)):
      if have.get(key) != want.get(key):
        found = f"{key} of shape {have[key]}" if key in have else f"no {key}"
        needed = f"shape {want[key]}" if key in want else "no such entry"
        raise IncompatibleCheckpoint(
            f"the checkpoint {self.directory}/{step} has {found}; this config's model has "
            f"{needed} (image_size, channels, nz, ngf, ndf must be the run's)")

  def restore(self, template: TrainState, step: int | None = None,
              sharding: jax.sharding.Sharding | None = None) -> TrainState:
    """Returns the checkpoint at `step` (default: latest), shaped like `template` (arrays
    or jax.ShapeDtypeStruct leaves), its arrays placed with `sharding` (default: on the first
    device), whatever devices wrote it.

    A checkpoint written without a generator EMA restores into a state that has one (the
    EMA starts from G's parameters); one written with an EMA restores into a state without
    (the EMA is dropped).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                            template)
    try:
      return self._restore(step, abstract)
    except ValueError as e:
      if "g_ema_params" not in str(e):
        raise
      error = e
    # The checkpoint's EMA setting differs from the template's: it holds an EMA, an empty
    # one (None), or no such field (written before the EMA option existed).
    other = abstract.g_params if abstract.g_ema_params is None else None
    without = {f.name: getattr(abstract, f.name) for f in dataclasses.fields(abstract)
               if f.name != "g_ema_params"}
    for alternative in (abstract.replace(g_ema_params=other), without):
      try:
        restored = self._restore(step, alternative)
        break
      except ValueError:
        continue
    else:
      raise error
    if isinstance(restored, dict):
      restored = TrainState(**restored)
    if abstract.g_ema_params is None:
      return restored.replace(g_ema_params=None)
    return restored.replace(g_ema_params=jax.tree.map(jnp.copy, restored.g_params))

  def close(self) -> None:
    """Waits for pending writes to finish, then releases the manager; RunError if a write
    failed."""
    try:
      self._manager.wait_until_finished()
      self._manager.close()
    except Exception as e:  # pylint: disable=broad-except  # a failed write becomes one line
      with contextlib.suppress(Exception):  # closing raises the same failure again
        self._manager.close()
      self._raise_write_failure(e)
      raise


class BestCheckpointer(Checkpointer):
  """The one checkpoint with the lowest value of `metric` so far (Orbax's best mode)."""

  def __init__(self, directory: str, metric: str, create: bool = True):
    super().__init__(directory, max_to_keep=1, create=create, options=dict(
        best_fn=lambda m: m[metric], best_mode="min", keep_checkpoints_without_metrics=False))
    self.metric = metric
    self._best = math.inf
    step = self.latest_step()
    if step is not None:
      saved = self._manager.metrics(step) or {}
      self._best = float(saved.get(metric, math.inf))

  def best_value(self) -> float:
    """Returns the metric of the kept checkpoint (inf when there is none)."""
    return self._best

  def offer(self, state: TrainState, value: float) -> bool:
    """Keeps `state` if `value` is finite and lower than the best so far; returns whether."""
    if not math.isfinite(value) or value >= self._best:
      return False
    saved = self.save(state, {self.metric: value})
    if saved:
      self._best = value
    return saved


def step_numbers(directory: str) -> list[int]:
  """The steps a checkpoint folder holds (committed or not), read from its folder names."""
  if not os.path.isdir(directory):
    return []
  return [int(n) for n in os.listdir(directory) if n.isdigit()]


def restore_newest(directory: str, template: TrainState) -> tuple[TrainState, int] | None:
  """Reads the newest checkpoint of a folder for use (sampling, evaluation, export), on the
  first device; None when the folder holds none.

  Raises IncompatibleCheckpoint for another model's checkpoint and RunError naming the
  checkpoint when it cannot be read.
  """
  ckpt = Checkpointer(directory, create=False)
  try:
    step = ckpt.latest_step()
    if step is None:
      return None
    ckpt.check_fits(template, step)
    try:
      return ckpt.restore(template), step
    except Exception as e:  # pylint: disable=broad-except  # Orbax raises plain Exceptions
      raise RunError(f"the checkpoint {directory}/{step} cannot be read "
                     f"({root_cause(e)})") from e
  finally:
    ckpt.close()


def restore_or_init(ckpt: Checkpointer, gan: steps.GAN, seed: int,
                    sharding: jax.sharding.Sharding) -> tuple[TrainState, dict]:
  """Returns (state, extra) of the newest readable checkpoint, or a freshly initialised state
  and {}, placed with `sharding` (a checkpoint written with any number of devices and
  processes).

  A checkpoint of another model is refused (IncompatibleCheckpoint); damaged ones (files
  that cannot be read back) are moved to `<folder>_damaged/` when an older checkpoint can be
  read, and the run resumes from that one. With none readable, a RunError names the newest
  and touches nothing.
  """
  if ckpt.latest_step() is None:
    return steps.init_train_state(gan, seed, sharding), {}
  template = steps.abstract_train_state(gan)
  damaged: list[tuple[int, str]] = []
  for step in reversed(ckpt.all_steps()):
    try:
      ckpt.check_fits(template, step)
      state = ckpt.restore(template, step, sharding=sharding)
      extra = ckpt.extra(step)
    except IncompatibleCheckpoint:
      raise  # another model: refused, whatever the checkpoint's age
    except Exception as e:  # pylint: disable=broad-except  # Orbax raises plain Exceptions
      damaged.append((step, root_cause(e)))
      continue
    if damaged:
      _set_aside(ckpt, [s for s, _ in damaged])
      logging.getLogger(__name__).warning(
          "checkpoint step %d cannot be read (%s); moved to %s_damaged; resuming from step %d",
          damaged[0][0], damaged[0][1], ckpt.directory, step)
    return state, extra
  step, why = damaged[0]
  raise RunError(f"no checkpoint in {ckpt.directory} can be read (the newest, step {step}: "
                 f"{why}); move that folder away to start the run again")


def _set_aside(ckpt: Checkpointer, damaged_steps: list[int]) -> None:
  """Moves damaged step folders to <folder>_damaged/ (process 0), so that the run can save
  those steps again; nothing is deleted."""
  if parallel.is_primary():
    for step in damaged_steps:
      target = os.path.join(f"{ckpt.directory}_damaged", str(step))
      if os.path.exists(target):
        target = f"{target}.{time.strftime('%Y%m%d-%H%M%S')}"
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(os.path.join(ckpt.directory, str(step)), target)
  parallel.sync("dcgan_jax:damaged_checkpoints")
  ckpt.reload()
