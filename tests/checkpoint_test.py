"""Orbax save/restore round trips and the never-go-backwards rule."""

import asyncio
import gc
import logging

import pytest

from dcgan_jax import checkpoint, steps
from conftest import jit_train_step, trees_close

pytestmark = pytest.mark.slow  # compiles training steps


def test_save_restore_gives_identical_pytree(tmp_path, gan, state, real_batch):
  state, _ = jit_train_step(gan, state, real_batch)  # non-trivial optimizer state
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"))
  assert ckpt.latest_step() is None
  assert ckpt.save(state)
  ckpt.close()
  fresh = steps.init_train_state(gan, 42)
  restored = checkpoint.Checkpointer(str(tmp_path / "ckpt")).restore(fresh)
  assert trees_close(restored, state)
  from_shapes = checkpoint.Checkpointer(str(tmp_path / "ckpt")).restore(
      steps.abstract_train_state(gan))
  assert trees_close(from_shapes, state)
  assert int(restored.step) == 1


def test_never_overwrites_a_newer_checkpoint(tmp_path, gan, state, real_batch):
  newer, _ = jit_train_step(gan, state, real_batch)
  newer, _ = jit_train_step(gan, newer, real_batch)
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  assert ckpt.save(newer)
  assert not ckpt.save(newer)  # same step again
  older, _ = jit_train_step(gan, state, real_batch)
  assert not ckpt.save(older)
  ckpt.close()
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  assert ckpt.latest_step() == 2
  assert trees_close(ckpt.restore(state), newer)


def test_keeps_at_most_max_to_keep(tmp_path, gan, state, real_batch):
  ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=2)
  for _ in range(3):
    state, _ = jit_train_step(gan, state, real_batch)
    ckpt.save(state)
  ckpt.close()
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["2", "3"]


def test_restore_without_checkpoint_raises(tmp_path, state):
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    checkpoint.Checkpointer(str(tmp_path)).restore(state)


def test_best_checkpointer_keeps_only_the_lowest(tmp_path, gan, state, real_batch):
  best = checkpoint.BestCheckpointer(str(tmp_path / "best"), "fid")
  assert best.best_value() == float("inf")
  states = [state]
  for _ in range(4):
    states.append(jit_train_step(gan, states[-1], real_batch)[0])
  assert best.offer(states[1], 50.0)
  assert not best.offer(states[2], 60.0)  # worse: not kept
  assert best.offer(states[3], 40.0)
  assert not best.offer(states[4], float("nan"))
  best.close()
  reopened = checkpoint.BestCheckpointer(str(tmp_path / "best"), "fid")
  assert reopened.best_value() == 40.0 and reopened.latest_step() == 3
  assert sorted(p.name for p in (tmp_path / "best").iterdir() if p.name.isdigit()) == ["3"]
  assert trees_close(reopened.restore(steps.abstract_train_state(gan)), states[3])
  assert not reopened.offer(states[3], 30.0)  # a step it holds is never written again
  reopened.close()


def test_checkpoints_restore_across_the_ema_setting(tmp_path, gan, state, real_batch):
  import dataclasses  # pylint: disable=g-import-not-at-top
  state, _ = jit_train_step(gan, state, real_batch)
  plain = checkpoint.Checkpointer(str(tmp_path / "plain"))
  plain.save(state)
  plain.close()
  ema_gan = dataclasses.replace(gan, g_ema_decay=0.99)
  reopened = checkpoint.Checkpointer(str(tmp_path / "plain"))
  with_ema = reopened.restore(steps.abstract_train_state(ema_gan))
  reopened.close()
  assert trees_close(with_ema.g_params, state.g_params)
  assert trees_close(with_ema.g_ema_params, state.g_params)  # the EMA starts from G

  ema_state = steps.init_train_state(ema_gan, 1)
  ema_ckpt = checkpoint.Checkpointer(str(tmp_path / "ema"))
  ema_ckpt.save(ema_state)
  without = ema_ckpt.restore(steps.abstract_train_state(gan))
  ema_ckpt.close()
  assert without.g_ema_params is None
  assert trees_close(without.d_params, ema_state.d_params)


def test_checkpoint_from_before_the_ema_field_restores(tmp_path, gan, state):
  import dataclasses  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
            if f.name != "g_ema_params"}  # the state's tree as written before the field
  with ocp.CheckpointManager(str(tmp_path / "old")) as manager:
    manager.save(0, args=ocp.args.StandardSave(fields))
  ckpt = checkpoint.Checkpointer(str(tmp_path / "old"))
  restored = ckpt.restore(steps.abstract_train_state(gan))
  with_ema = ckpt.restore(steps.abstract_train_state(dataclasses.replace(gan, g_ema_decay=0.5)))
  ckpt.close()
  assert trees_close(restored, state)
  assert trees_close(with_ema.g_ema_params, state.g_params)


def test_unretrieved_failed_reads_are_dropped_and_other_unretrieved_errors_kept(caplog):
  read_error = ("OUT_OF_RANGE: Error reading \"d_params/.zarray\" in OCDBT database "
                "[tensorstore_spec='{\"driver\":\"zarr\"}']")

  async def fail(message):
    raise ValueError(message)

  async def leave_unretrieved():
    for message in (read_error, "a bug elsewhere", "Error reading a file"):
      task = asyncio.ensure_future(fail(message))
      await asyncio.sleep(0)
      del task  # finished with an exception nothing retrieves

  asyncio_logger = logging.getLogger("asyncio")
  dropper = checkpoint.UnretrievedFailedReads()
  asyncio_logger.addFilter(dropper)
  try:
    with caplog.at_level(logging.ERROR, logger="asyncio"):
      asyncio.run(leave_unretrieved())
      gc.collect()
  finally:
    asyncio_logger.removeFilter(dropper)
  reported = [str(r.exc_info[1]) for r in caplog.records
              if r.getMessage().startswith("Task exception was never retrieved")]
  assert reported == ["a bug elsewhere", "Error reading a file"]
