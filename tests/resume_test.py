"""What a resumed run may change (logged, kept in config.json's history with its step) and what
it may not (refused in one line naming the field and both values, nothing written)."""

import json
import os

import jax
import numpy as np
import pytest

from conftest import tiny_config
from dcgan_jax import checkpoint, steps, train
from dcgan_jax import workdir as workdir_lib
from dcgan_jax.configs import default
from dcgan_jax.errors import UsageError

pytestmark = pytest.mark.slow  # trains runs


def test_every_field_is_in_one_table():
  fields = set(default.get_config().keys())
  fixed, changeable = set(workdir_lib.FIXED_ON_RESUME), set(workdir_lib.CHANGEABLE_ON_RESUME)
  assert not fixed & changeable
  assert fixed | changeable == fields, sorted(fields ^ (fixed | changeable))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("resume") / "run"
  config = tiny_config(4)
  config.checkpoint_every_steps = 4
  train.train_and_evaluate(config, str(workdir))
  return workdir


def _d_params(workdir, config):
  gan = steps.gan_from_config(config)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), create=False)
  try:
    return jax.device_get(ckpt.restore(steps.abstract_train_state(gan))).d_params
  finally:
    ckpt.close()


def test_changes_are_logged_kept_with_their_step_and_take_effect(run, tmp_path, caplog):
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  shutil.copytree(run, workdir)
  config = tiny_config(6)
  config.checkpoint_every_steps = 4
  before = _d_params(workdir, config)
  config.d_learning_rate = 1e-12  # D all but stops
  with caplog.at_level("INFO"):
    train.train_and_evaluate(config, str(workdir))
  lines = [r.getMessage() for r in caplog.records if "changed settings" in r.getMessage()]
  assert lines == ["resuming at step 4 with changed settings: d_learning_rate 0.0002 -> 1e-12, "
                   "num_train_steps 4 -> 6"]
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["d_learning_rate"] == 1e-12 and saved["num_train_steps"] == 6
  assert saved["history"] == [{"step": 4, "changed": {"d_learning_rate": [0.0002, 1e-12],
                                                      "num_train_steps": [4, 6]}}]
  after = _d_params(workdir, config)
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(after),
                                                            jax.tree.leaves(before)))
  assert moved < 1e-8  # the new learning rate took effect from step 4
  config.num_train_steps, config.log_every_steps = 8, 4  # a second resume adds its own
  train.train_and_evaluate(config, str(workdir))
  history = json.loads((workdir / "config.json").read_text())["history"]
  assert history[1] == {"step": 6, "changed": {"log_every_steps": [2, 4],
                                               "num_train_steps": [6, 8]}}
  assert workdir_lib.load_config(str(workdir)).num_train_steps == 8  # history set aside


@pytest.mark.parametrize("field, value", [
    ("batch_size", 8), ("seed", 1), ("ngf", 16), ("loss", "hinge"), ("init_from", "elsewhere"),
    ("init_g_ema", True),
])
def test_a_field_that_may_not_change_is_refused(run, field, value):
  config = tiny_config(6)
  config.checkpoint_every_steps = 4
  old = config[field]
  config[field] = value
  saved = (run / "config.json").read_bytes()
  with pytest.raises(UsageError) as e:
    train.train_and_evaluate(config, str(run))
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith(f"--workdir={str(run)!r} holds a run trained with "
                            f"config.{field}={old!r} (its config.json), this config has "
                            f"{value!r}")
  assert (run / "config.json").read_bytes() == saved
  assert sorted(os.listdir(run / "checkpoints")) == ["4"]


def test_a_hand_edited_history_that_is_not_a_list_is_set_aside(run, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  shutil.copytree(run, workdir)
  saved = json.loads((workdir / "config.json").read_text())
  saved["history"] = 5
  (workdir / "config.json").write_text(json.dumps(saved))
  config = tiny_config(6)
  config.checkpoint_every_steps = 4
  train.train_and_evaluate(config, str(workdir))
  assert json.loads((workdir / "config.json").read_text())["history"] == [
      {"step": 4, "changed": {"num_train_steps": [4, 6]}}]
