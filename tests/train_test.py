"""End to end: a tiny run writes every workdir output, resumes exactly, never goes back."""

import json
import logging
import os
import shutil
import threading

import jax
import numpy as np
import pytest
from PIL import Image

from dcgan_jax.configs import celeba
from dcgan_jax import metrics, steps, train
from conftest import make_image_folder, tiny_config, trees_close

pytestmark = pytest.mark.slow  # trains runs


@pytest.fixture(scope="module")
def six_step_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  return workdir, train.train_and_evaluate(tiny_config(6), workdir)


def test_run_writes_every_output(six_step_run):
  workdir, state = six_step_run
  assert int(state.step) == 6
  rows = metrics.read_metrics(os.path.join(workdir, "metrics.csv"))
  assert [r["step"] for r in rows] == ["2", "4", "6"]
  for column in ("loss_d", "loss_g", "d_x", "d_g_z1", "d_g_z2", "images_per_s"):
    assert all(np.isfinite(float(r[column])) for r in rows[1:]), column
  assert 0 < float(rows[-1]["d_x"]) < 1
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
  assert sorted(os.listdir(os.path.join(workdir, "samples"))) == ["step_0000003.png",
                                                                   "step_0000006.png"]
  grid = Image.open(os.path.join(workdir, "samples.png"))
  assert grid.size == (2 * 34 + 2, 2 * 34 + 2)  # 4 images of 32 px, padding 2
  assert Image.open(os.path.join(workdir, "losses.png")).format == "PNG"
  # Without an evaluator: no evaluation columns, no best checkpoint, no quality plot.
  assert "classifier_fid" not in rows[0] and "fid" not in rows[0]
  assert not {"best", "quality.png"} & set(os.listdir(workdir))
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f) == tiny_config(6).to_dict()


def test_resumed_run_continues_and_equals_an_uninterrupted_run(six_step_run, tmp_path):
  workdir = str(tmp_path / "resumed")
  shutil.copytree(six_step_run[0], workdir)  # its own copy: the fixture's run stays at step 6
  resumed = train.train_and_evaluate(tiny_config(9), workdir)
  assert int(resumed.step) == 9
  rows = metrics.read_metrics(os.path.join(workdir, "metrics.csv"))
  assert [r["step"] for r in rows] == ["2", "4", "6", "8", "9"]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6", "9"]
  straight = train.train_and_evaluate(tiny_config(9), str(tmp_path / "straight"))
  assert trees_close(jax.device_get(resumed), jax.device_get(straight))
  untimed = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}
                          for r in rows]
  assert untimed(rows) == untimed(metrics.read_metrics(str(tmp_path / "straight" / "metrics.csv")))


def test_a_new_run_compiles_its_initialisation_in_a_thread_and_a_resumed_one_does_not(
    six_step_run, tmp_path, monkeypatch):
  """A new workdir's initialisation compiles in a thread beside the evaluator's work; its
  failure there changes nothing (init_train_state compiles the program itself). A workdir with
  checkpoints restores and compiles none."""
  threads = []
  def failing_compile_init(gan, sharding):  # pylint: disable=unused-argument
    threads.append(threading.current_thread().name)
    raise RuntimeError("no compiler here")
  monkeypatch.setattr(steps, "compile_init", failing_compile_init)
  state = train.train_and_evaluate(tiny_config(2), str(tmp_path / "new"))
  assert int(state.step) == 2 and threads == ["compile_init"]
  workdir = str(tmp_path / "resumed")
  shutil.copytree(six_step_run[0], workdir)
  assert int(train.train_and_evaluate(tiny_config(7), workdir).step) == 7
  assert threads == ["compile_init"]


@pytest.mark.parametrize("fields", [dict(data_on_device=True), dict(steps_per_dispatch=2),
                                    dict(data_on_device=True, steps_per_dispatch=2)])
def test_feeding_options_give_the_same_run(six_step_run, tmp_path, fields):
  workdir, one_per_dispatch = six_step_run
  config = tiny_config(6)
  config.update(fields)
  # pylint: disable-next=protected-access
  jitted = train._train_steps_gather if config.data_on_device else train._train_steps
  programs = jitted._cache_size()  # pylint: disable=protected-access
  other = train.train_and_evaluate(config, str(tmp_path))
  if config.steps_per_dispatch == 2:  # chunks of 2, 1, 1 and 2 steps: the scan of 2 steps and
    # the padded program of the shorter ones, not a program for each length
    assert jitted._cache_size() - programs == 2  # pylint: disable=protected-access
  for a, b in zip(jax.tree.leaves(jax.device_get(other)),
                  jax.tree.leaves(jax.device_get(one_per_dispatch))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  rows = metrics.read_metrics(str(tmp_path / "metrics.csv"))
  assert [r["step"] for r in rows] == ["2", "4", "6"]  # chunks end on every logged step
  for row, expected in zip(rows, metrics.read_metrics(os.path.join(workdir, "metrics.csv"))):
    for column in ("loss_d", "loss_g", "d_x", "d_g_z1", "d_g_z2"):  # each step's, once
      assert float(row[column]) == pytest.approx(float(expected[column]), rel=1e-4), column
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]


@pytest.mark.parametrize("conditional", [False, True])
def test_bfloat16_run_trains_with_float32_state(tmp_path, conditional):
  config = tiny_config(4)
  config.compute_dtype, config.conditional = "bfloat16", conditional
  state = train.train_and_evaluate(config, str(tmp_path))
  assert ("class_projection" in state.d_params) == conditional
  assert int(state.step) == 4
  assert all(x.dtype in (np.float32, np.int32, np.uint32) for x in jax.tree.leaves(state))
  rows = metrics.read_metrics(str(tmp_path / "metrics.csv"))
  assert all(np.isfinite(float(r["loss_d"])) and np.isfinite(float(r["loss_g"])) for r in rows)


def test_shorter_run_never_overwrites_newer_outputs(six_step_run):
  workdir, _ = six_step_run
  ckpt_dir = os.path.join(workdir, "checkpoints")
  before = {n: os.path.getmtime(os.path.join(ckpt_dir, n)) for n in os.listdir(ckpt_dir)}
  metrics_before = open(os.path.join(workdir, "metrics.csv")).read()
  state = train.train_and_evaluate(tiny_config(4), workdir)
  assert int(state.step) == max(int(n) for n in before)
  assert {n: os.path.getmtime(os.path.join(ckpt_dir, n)) for n in os.listdir(ckpt_dir)} == before
  assert open(os.path.join(workdir, "metrics.csv")).read() == metrics_before


def test_plain_log_lines_without_a_terminal(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  train.train_and_evaluate(tiny_config(2), str(tmp_path))
  assert any("step 2 epoch" in r.getMessage() and "loss_D" in r.getMessage()
             for r in caplog.records)


def _celeba_smoke_config():
  config = celeba.get_config()
  config.batch_size = 4
  config.num_train_steps = 2
  config.num_sample_images = 4
  return config


def test_celeba_config_trains_on_a_folder_of_images(tmp_path):
  make_image_folder(tmp_path / "img_align_celeba", count=9)
  config = _celeba_smoke_config()
  config.dataset, config.data_dir = "imagefolder", str(tmp_path / "img_align_celeba")
  state = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert int(state.step) == 2
  assert state.g_params["Project4x4_0"]["kernel"].shape == (4, 4, 512, 100)  # tutorial's netG
  assert Image.open(tmp_path / "run" / "samples.png").size == (2 * 66 + 2, 2 * 66 + 2)


def test_celeba_config_trains_on_tfds_celeb_a(tmp_path):
  config = _celeba_smoke_config()
  config.ngf = config.ndf = 8
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=8):
    state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 2
  assert len(metrics.read_metrics(str(tmp_path / "metrics.csv"))) == 1
