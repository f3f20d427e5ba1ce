"""A thin wrapper over Orbax's CheckpointManager: save, restore latest, resume."""

import os

import jax
import orbax.checkpoint as ocp

from dcgan_jax.steps import TrainState


class Checkpointer:
  """Checkpoints of a TrainState under `directory`, one subfolder per step."""

  def __init__(self, directory: str, max_to_keep: int | None = 3, create: bool = True):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, state: TrainState) -> bool:
    """Saves at state.step unless a checkpoint of that or a later step exists.

    A newer checkpoint is never replaced by an older state; returns whether it saved.
    """
    step = int(state.step)
    latest = self.latest_step()
    if latest is not None and step <= latest:
      return False
    return bool(self._manager.save(step, args=ocp.args.StandardSave(state)))

  def restore(self, template: TrainState, step: int | None = None) -> TrainState:
    """The checkpoint at `step` (default: latest), shaped like `template` (arrays
    or jax.ShapeDtypeStruct leaves)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def close(self) -> None:
    """Waits for pending writes to finish, then releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()
