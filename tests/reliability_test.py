"""Reliability through main.py: exact resume after SIGKILL (also during a checkpoint save),
a clean stop on SIGTERM, the divergence guard, and one-line errors for bad configs and
bad workdirs, each leaving what was written as it was."""

import os
import pathlib
import random
import resource
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import tiny_config, trees_close, truncate_checkpoint_arrays
from dcgan_jax import checkpoint, metrics, steps

pytestmark = pytest.mark.slow  # runs the program in subprocesses

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


def _final_state(workdir, **fields):
  config = tiny_config(400)  # the model of _RUN
  for field, value in fields.items():
    config[field] = value
  gan = steps.gan_from_config(config)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), create=False)
  try:
    return jax.device_get(ckpt.restore(steps.abstract_train_state(gan)))
  finally:
    ckpt.close()


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


@pytest.mark.xla_default
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
  assert trees_close(_final_state(workdir), _final_state(uninterrupted))


@pytest.mark.xla_default
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
  assert f"run stopped by SIGTERM: step {step} of 100,000 (" in err  # the summary
  assert f"--workdir {workdir}   (the same command as this run's resumes it)" in err
  assert step >= 6 and str(step) in os.listdir(workdir / "checkpoints")
  if step < 400:  # resume to the uninterrupted run's end: the same rows and state
    subprocess.run(_main(workdir, *_RUN), check=True, capture_output=True, timeout=300)
    assert _untimed_rows(workdir) == _untimed_rows(uninterrupted)
    assert trees_close(_final_state(workdir), _final_state(uninterrupted))


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
  assert "run diverged (nothing after the latest checkpoint was kept): step 1 of " in \
      result.stderr  # the summary, before the error
  assert os.listdir(workdir / "checkpoints") == ["1"]
  config = tiny_config(40)
  gan = steps.gan_from_config(config)
  ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), create=False)
  state = ckpt.restore(steps.abstract_train_state(gan))
  ckpt.close()
  assert int(state.step) == 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state) if x.dtype.kind == "f")
  assert metrics.read_metrics(str(workdir / "metrics.csv")) == []  # no row of a NaN step


def _folder_args(images) -> list[str]:
  return ["--config.num_train_steps=6", "--config.ngf=8", "--config.ndf=8",
          "--config.batch_size=16", "--config.dataset=imagefolder",
          f"--config.data_dir={images}", "--config.channels=3", "--config.evaluator=",
          "--config.log_every_steps=2", "--config.checkpoint_every_steps=2",
          "--config.sample_every_steps=3", "--config.num_sample_images=4"]


def test_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_used(folder_run, tmp_path):
  base = folder_run
  case = tmp_path / "case"
  shutil.copytree(base, case)
  images, workdir = case / "images", case / "run"
  rows_before = _untimed_rows(workdir)
  truncate_checkpoint_arrays(workdir / "checkpoints" / "4")
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


# The state each GAN variant adds, through a SIGKILL and a resume: spectral norm's vectors, the
# critic's LayerNorm and several D updates, the augmentation's keys (the losses add none; each
# runs with one of them), each without R1. The default's (R1, BatchNorm, one D update) is
# _RUN's.
_NO_R1 = {"r1_weight": 0.0}
_VARIANTS = {
    "hinge_spectral_norm": {**_NO_R1, "loss": "hinge", "spectral_norm": True, "d_norm": "none"},
    "lsgan_diffaugment": {**_NO_R1, "loss": "lsgan", "diffaugment": "color,translation,cutout"},
    "wgan_gp": {**_NO_R1, "loss": "wgan_gp", "d_steps_per_g_step": 2, "adam_b1": 0.0,
                "adam_b2": 0.9},
}


def sigkill_and_resume(tmp_path, args: list[str]) -> tuple[pathlib.Path, pathlib.Path]:
  """Runs main.py with args uninterrupted (tmp_path/reference), and again (tmp_path/killed)
  SIGKILLed right after its first checkpoint, then resumed to its end: the two workdirs."""
  reference = tmp_path / "reference"
  subprocess.run(_main(reference, *args), check=True, capture_output=True, timeout=900)
  workdir = tmp_path / "killed"
  proc = subprocess.Popen(_main(workdir, *args), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  killed = _kill_while_training(proc, workdir / "checkpoints", 0.0)
  _, err = proc.communicate(timeout=900)
  assert killed, f"the run ended before it was killed: {err[-2000:]}"
  result = subprocess.run(_main(workdir, *args), capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "resuming at step " in result.stderr
  return reference, workdir


@pytest.mark.parametrize("name", sorted(_VARIANTS))
def test_each_variant_resumes_exactly_after_sigkill(name, tmp_path):
  fields = _VARIANTS[name]
  args = [*_RUN, "--config.num_train_steps=30",
          *(f"--config.{k}={v}" for k, v in fields.items())]
  reference, workdir = sigkill_and_resume(tmp_path, args)
  rows = _untimed_rows(workdir)
  assert rows == _untimed_rows(reference) and len(rows) == 6
  assert ("d_penalty" in rows[0]) == (name == "wgan_gp")
  assert trees_close(_final_state(workdir, **fields), _final_state(reference, **fields))


def _memory_limit(nbytes: int):
  def limit():
    resource.setrlimit(resource.RLIMIT_AS, (nbytes, nbytes))
  return limit


def test_out_of_memory_is_one_line_and_the_next_try_trains(tmp_path):
  """A batch too large for the memory (a 12 GB address-space limit here, a GPU's memory there):
  one line naming the step, the batch, the image size and the device, exit 2; the smaller batch
  then trains in the same workdir."""
  workdir = tmp_path / "run"
  # Without the session's compilation cache: writing the executable to it would ask for memory
  # inside XLA's compiler, where running out aborts the process (std::bad_alloc) before any
  # Python sees it.
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE",
                                                                  "JAX_PERSISTENT_CACHE"))}
  # One step per call: the program of one step compiles in a third of the time of 25 steps'.
  result = subprocess.run(_main(workdir, "--config.image_size=128", "--config.batch_size=2048",
                                "--config.evaluator=",  # training is what runs out of memory
                                "--config.steps_per_dispatch=1"),
                          capture_output=True, text=True, timeout=600, env=env,
                          preexec_fn=_memory_limit(12 * 2**30))
  assert result.returncode == 2, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: out of memory on cpu (cpu) at training step 1 "
                         "(config.batch_size 2048 of 128x128x1 images, 1 step per call)"), last
  assert "GiB asked at once: lower config.batch_size (now 2048)" in last
  assert "Traceback" not in result.stderr
  result = subprocess.run(_main(workdir, *_RUN, "--config.num_train_steps=2",
                                "--config.image_size=128"),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  assert [r["step"] for r in metrics.read_metrics(str(workdir / "metrics.csv"))] == ["2"]
