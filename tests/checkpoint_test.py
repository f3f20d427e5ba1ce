"""Orbax save/restore round trips and the never-go-backwards rule."""

import jax
import numpy as np
import pytest

from dcgan_jax import checkpoint, steps
from conftest import jit_train_step


def _assert_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(x, y)


def test_save_restore_gives_identical_pytree(tmp_path, gan, state, real_batch):
  state, _ = jit_train_step(gan, state, real_batch)  # non-trivial optimizer state
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"))
  assert ckpt.latest_step() is None
  assert ckpt.save(state)
  ckpt.close()
  fresh = steps.init_train_state(gan, 42)
  restored = checkpoint.Checkpointer(str(tmp_path / "ckpt")).restore(fresh)
  _assert_identical(restored, state)
  from_shapes = checkpoint.Checkpointer(str(tmp_path / "ckpt")).restore(
      steps.abstract_train_state(gan))
  _assert_identical(from_shapes, state)
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
  _assert_identical(ckpt.restore(state), newer)


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
