"""Thin wrappers over Orbax's CheckpointManager: the latest checkpoints of a run, and the
best one by an evaluation metric, kept apart."""

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from dcgan_jax.steps import TrainState


class Checkpointer:
  """Checkpoints of a TrainState under `directory`, one subfolder per step."""

  def __init__(self, directory: str, max_to_keep: int | None = 3, create: bool = True,
               options: dict | None = None):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                             **(options or {})))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, state: TrainState, metrics: dict[str, float] | None = None) -> bool:
    """Saves at state.step unless a checkpoint of that or a later step exists.

    A newer checkpoint is never replaced by an older state; returns whether it saved.
    """
    step = int(state.step)
    latest = self.latest_step()
    if latest is not None and step <= latest:
      return False
    return bool(self._manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics))

  def _restore(self, step: int, abstract):
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def restore(self, template: TrainState, step: int | None = None,
              sharding: jax.sharding.Sharding | None = None) -> TrainState:
    """The checkpoint at `step` (default: latest), shaped like `template` (arrays
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
    """Waits for pending writes to finish, then releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()


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
    """The metric of the kept checkpoint (inf when there is none)."""
    return self._best

  def offer(self, state: TrainState, value: float) -> bool:
    """Keeps `state` if `value` is finite and lower than the best so far; returns whether."""
    if not math.isfinite(value) or value >= self._best:
      return False
    saved = self.save(state, {self.metric: value})
    if saved:
      self._best = value
    return saved
