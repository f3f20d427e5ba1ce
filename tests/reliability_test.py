"""Reliability through main.py: exact resume after SIGKILL (also during a checkpoint save),
a clean stop on SIGTERM, the divergence guard, and one-line errors for bad configs and
bad workdirs, each leaving what was written as it was."""

import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import make_image_folder
from dcgan_jax import checkpoint, metrics, steps, train
from train_test import tiny_config

ROOT = pathlib.Path(__file__).resolve().parent.parent
_RUN = ["--config.num_train_steps=400", "--config.ngf=8", "--config.ndf=8",
        "--config.batch_size=16", "--config.log_every_steps=5",
        "--config.checkpoint_every_steps=7",  # most checkpoints fall between two rows
        "--config.sample_every_steps=100", "--config.num_sample_images=4", "--config.evaluator="]
_TIMING = ("seconds", "images_per_s")


def _main(workdir, *args) -> list[str]:
  return [sys.executable, str(ROOT / "main.py"), f"--workdir={workdir}", *args]


def _untimed_rows(workdir) -> list[dict]:
  return [{k: v for k, v in row.items() if k not in _TIMING}
          for row in metrics.read_metrics(os.path.join(workdir, "metrics.csv"))]


def _final_state(workdir):
  config = tiny_config(400)  # the model of _RUN
  gan = train.build_gan(config)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), create=False)
  try:
    return jax.device_get(ckpt.restore(steps.abstract_train_state(gan)))
  finally:
    ckpt.close()


def _assert_same_state(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  subprocess.run(_main(workdir, *_RUN), check=True, capture_output=True, timeout=300)
  return workdir


def _partial(folder: pathlib.Path) -> set[str]:
  return {n for n in os.listdir(folder) if "tmp" in n} if folder.is_dir() else set()


def _committed(folder: pathlib.Path) -> set[str]:
  return {n for n in os.listdir(folder) if n.isdigit()} if folder.is_dir() else set()


def _kill_while_training(proc, folder: pathlib.Path, delay: float, timeout: float = 60) -> bool:
  """SIGKILLs proc `delay` seconds after it committed its first checkpoint; False if the run
  ended first."""
  t0, before = time.time(), _committed(folder)
  while proc.poll() is None and time.time() - t0 < timeout:
    if _committed(folder) - before:
      time.sleep(delay)
      proc.kill()
      return proc.wait() == -signal.SIGKILL
    time.sleep(0.001)
  return False


def _kill_during_save(proc, folder: pathlib.Path, timeout: float = 60) -> bool:
  """SIGKILLs proc as soon as it writes a checkpoint (a temporary step folder appears, after
  those of earlier runs were cleared away); False if the run ended first."""
  t0, left_over = time.time(), _partial(folder)
  while proc.poll() is None and time.time() - t0 < timeout:
    now = _partial(folder)
    left_over &= now
    if now - left_over:
      proc.kill()
      proc.wait()
      return True
    time.sleep(0.0005)
  return False


def test_sigkill_anywhere_resumes_to_the_same_rows_and_state(uninterrupted, tmp_path):
  workdir = tmp_path / "killed"
  folder = workdir / "checkpoints"
  rng = random.Random(0)
  killed_in_save, kills, resumed_at = 0, 0, []
  for _ in range(12):  # kills at random points and during saves, until each kind happened
    if kills >= 4 and killed_in_save >= 2 and any(s % 5 for s in resumed_at):
      break
    proc = subprocess.Popen(_main(workdir, *_RUN), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    if rng.random() < 0.5:
      killed = _kill_during_save(proc, folder)
      killed_in_save += killed
    else:
      killed = _kill_while_training(proc, folder, rng.uniform(0, 0.2))
    _, err = proc.communicate(timeout=300)
    assert killed, f"the run ended before it was killed: {err[-2000:]}"
    kills += 1
    resumed_at += [int(line.split("resuming at step ")[1].split()[0])
                   for line in err.splitlines() if "resuming at step" in line]
  result = subprocess.run(_main(workdir, *_RUN), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert kills >= 4 and killed_in_save >= 2  # partial checkpoints were left behind, ignored
  assert any(s % 5 for s in resumed_at), resumed_at  # resumed between two rows
  assert not [n for n in os.listdir(folder) if not n.isdigit()]  # and cleaned up
  assert _untimed_rows(workdir) == _untimed_rows(uninterrupted)
  _assert_same_state(_final_state(workdir), _final_state(uninterrupted))


def test_sigterm_stops_with_a_checkpoint_then_resumes_exactly(uninterrupted, tmp_path):
  workdir = tmp_path / "stopped"
  proc = subprocess.Popen(_main(workdir, *_RUN, "--config.num_train_steps=100000"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  while not (workdir / "metrics.csv").exists() or len(_untimed_rows(workdir)) < 3:
    assert proc.poll() is None
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  stopped = [line for line in err.splitlines() if "stopped by SIGTERM after step" in line]
  assert len(stopped) == 1, err[-2000:]
  step = int(stopped[0].split("after step ")[1].split(";")[0])
  assert step >= 6 and str(step) in os.listdir(workdir / "checkpoints")
  if step < 400:  # resume to the uninterrupted run's end: the same rows and state
    subprocess.run(_main(workdir, *_RUN), check=True, capture_output=True, timeout=300)
    assert _untimed_rows(workdir) == _untimed_rows(uninterrupted)
    _assert_same_state(_final_state(workdir), _final_state(uninterrupted))


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = tmp_path / "diverged"
  # G's first Adam step moves its weights by 1e38: finite, checkpointed at step 1; the next
  # forward pass overflows.
  result = subprocess.run(_main(workdir, *_RUN, "--config.g_learning_rate=1e38",
                                "--config.checkpoint_every_steps=1"),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: training diverged at step 2: ") and "is nan" in last
  assert "the last good checkpoint, step 1, is kept in" in last
  assert os.listdir(workdir / "checkpoints") == ["1"]
  config = tiny_config(40)
  gan = train.build_gan(config)
  ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), create=False)
  state = ckpt.restore(steps.abstract_train_state(gan))
  ckpt.close()
  assert int(state.step) == 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state) if x.dtype.kind == "f")
  assert metrics.read_metrics(str(workdir / "metrics.csv")) == []  # no row of a NaN step


# Bad workdirs, made from one trained run on a folder of images.
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  base = tmp_path_factory.mktemp("trained")
  images = make_image_folder(base / "images", count=40, size=(40, 40))
  workdir = base / "run"
  config = _folder_config(images)
  train.train_and_evaluate(config, str(workdir))
  return base, images, workdir


def _folder_config(images):
  config = tiny_config(4)
  config.dataset, config.data_dir, config.channels = "imagefolder", str(images), 3
  config.checkpoint_every_steps = config.log_every_steps = 2
  return config


def _folder_args(images) -> list[str]:
  return ["--config.num_train_steps=6", "--config.ngf=8", "--config.ndf=8",
          "--config.batch_size=16", "--config.dataset=imagefolder",
          f"--config.data_dir={images}", "--config.channels=3", "--config.evaluator=",
          "--config.log_every_steps=2", "--config.checkpoint_every_steps=2",
          "--config.sample_every_steps=3", "--config.num_sample_images=4"]


def _truncate_arrays(step_dir: pathlib.Path) -> None:
  for path in step_dir.rglob("*"):
    if path.is_file() and path.parent.name == "d":
      with open(path, "r+b") as f:
        f.truncate(10)


def _all_damaged(base, images, workdir):
  for step in ("2", "4"):
    _truncate_arrays(workdir / "checkpoints" / step)
  return _folder_args(images)


def _dataset_grew(base, images, workdir):
  make_image_folder(images / "more", count=3, size=(40, 40), seed=7)
  return _folder_args(images)


def _other_model(base, images, workdir):
  return _folder_args(images) + ["--config.ngf=16"]


def _other_model_no_config_json(base, images, workdir):
  (workdir / "config.json").unlink()
  return _folder_args(images) + ["--config.ndf=16"]


def _workdir_is_a_file(base, images, workdir):
  shutil.rmtree(workdir)
  workdir.write_text("not a folder")
  return _folder_args(images)


def _config_file(base, images, workdir, body: str) -> list[str]:
  path = base / "my_config.py"
  path.write_text(body)
  return [f"--config={path}"]


_DEFAULT_CONFIG = f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom configs import default\n"


@pytest.mark.parametrize("make,status,message", [
    (_all_damaged, 1, "no checkpoint in {workdir}/checkpoints can be read (the newest, step 4: "),
    (_dataset_grew, 2, "the dataset now has 43 images; the run in {workdir} was trained on 40"),
    (_other_model, 2, "holds a run trained with config.ngf=8 (its config.json), this config "
                      "has 16"),
    (_other_model_no_config_json, 2, "checkpoints/4 has d_batch_stats/BatchNorm_0/mean of shape "
                                     "(16,); this config's model has shape (32,)"),
    (_workdir_is_a_file, 2, "--workdir='{workdir}' cannot be written"),
    (lambda b, i, w: ["--config.seed=-1"], 2, "config.seed=-1 must be in [0, 2**32)"),
    (lambda b, i, w: [f"--config.cache_dir={w / 'config.json'}"], 2, "config.json' is not a folder"),
    (lambda b, i, w: ["--config.batch_size=0"], 2, "config.batch_size=0 must be positive"),
    (lambda b, i, w: ["--config.label_smoothing=1.0"], 2, "must be in [0, 1)"),
    (lambda b, i, w: ["--config.batch_size=2.5"], 2, "--config.batch_size=2.5"),
    (lambda b, i, w: _config_file(b, i, w, _DEFAULT_CONFIG + "def get_config():\n"
                                  "  c = default.get_config()\n  del c['ngf']\n  return c\n"),
     2, "config.ngf is missing"),
    (lambda b, i, w: _config_file(b, i, w, _DEFAULT_CONFIG + "def get_config():\n"
                                  "  c = default.get_config()\n  c.lr = 0.1\n  return c\n"),
     2, "config.lr is not a field of configs/default.py"),
    (lambda b, i, w: _config_file(b, i, w, "def get_config(:\n"), 2, "line 1: invalid syntax"),
])
def test_bad_configs_and_workdirs_get_one_line_and_touch_nothing(trained, tmp_path, make,
                                                                 status, message):
  base, images, workdir = trained
  case = tmp_path / "case"
  shutil.copytree(base, case, symlinks=True)
  images, workdir = case / "images", case / "run"
  args = make(case, images, workdir)
  before = {str(p): p.read_bytes() for p in sorted(case.rglob("*")) if p.is_file()}
  result = subprocess.run(_main(workdir, *args), capture_output=True, text=True, timeout=300)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == status, result.stderr[-2000:]
  assert lines and lines[-1].startswith("error: "), result.stderr[-2000:]
  assert message.format(workdir=workdir) in lines[-1], lines[-1]
  assert "Traceback" not in result.stderr
  after = {str(p): p.read_bytes() for p in sorted(case.rglob("*")) if p.is_file()}
  assert after == before


def test_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_used(trained, tmp_path):
  base, _, _ = trained
  case = tmp_path / "case"
  shutil.copytree(base, case)
  images, workdir = case / "images", case / "run"
  rows_before = _untimed_rows(workdir)
  _truncate_arrays(workdir / "checkpoints" / "4")
  result = subprocess.run(_main(workdir, *_folder_args(images)), capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "checkpoint step 4 cannot be read (ValueError: OUT_OF_RANGE" in result.stderr
  assert "resuming from step 2" in result.stderr
  assert "Traceback" not in result.stderr  # Orbax's failed reads leave nothing on stderr
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "6"]
  assert os.listdir(workdir / "checkpoints_damaged") == ["4"]  # kept, not deleted
  # Steps 3-4 were trained again from step 2: the rows up to 4 are the same as before.
  assert _untimed_rows(workdir)[:2] == rows_before
