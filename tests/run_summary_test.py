"""The end of a run: how it ended, its quality, where its files are, what to run next."""

import logging
import sys

import pytest

from dcgan_jax import run_summary, train
from conftest import tiny_config


def _workdir(tmp_path):
  (tmp_path / "metrics.csv").write_text(
      "step,loss_d,classifier_fid,ema_classifier_fid\n"
      "50,1,,\n100,1,30.5,40\n150,1,,\n200,1,35,nan\n")
  for name in ("samples.png", "losses.png"):
    (tmp_path / name).write_bytes(b"")
  for folder in ("checkpoints/100", "checkpoints/200", "checkpoints/300.orbax-checkpoint-tmp",
                 "best/100"):
    (tmp_path / folder).mkdir(parents=True)
  return tmp_path


def test_summary_of_a_finished_run(tmp_path, monkeypatch):
  w = _workdir(tmp_path)
  monkeypatch.setattr(sys, "argv", ["main.py"])
  lines = run_summary.summary(str(w), "finished", 0, 200, 200, 125.4,
                              "ema_classifier_fid").splitlines()
  assert lines[0] == "run finished: step 200 of 200 (200 steps in this run, 2 min 5 s)"
  assert lines[1] == "  classifier_fid of G: final 35 at step 200, best 30.5 at step 100"
  # The EMA's last value was not finite: its final is the last finite one.
  assert lines[2] == "  ema_classifier_fid of G's EMA: final 40 at step 100, best 40 at step 100"
  assert lines[3] == f"  pictures: {w / 'samples.png'}, {w / 'losses.png'}"
  assert lines[4] == f"  latest checkpoint: {w / 'checkpoints' / '200'}"
  assert lines[5] == f"  best checkpoint: {w / 'best' / '100'}"
  assert lines[6:] == ["  next:", f"    python main.py --mode sample --workdir {w}",
                       f"    python main.py --mode eval --workdir {w}",
                       f"    python main.py --mode serve --workdir {w}"]


def test_summary_of_a_stopped_run_says_how_to_resume(tmp_path, monkeypatch):
  w = _workdir(tmp_path)
  (w / "tensorboard").mkdir()
  monkeypatch.setattr(sys, "argv", ["/usr/bin/dcgan-jax"])
  text = run_summary.summary(str(w), "stopped by SIGTERM", 100, 200, 7800, 3725, None)
  assert text.startswith("run stopped by SIGTERM: step 200 of 7,800 (100 steps in this run, "
                         "1 h 2 min 5 s)")
  assert "classifier_fid" not in text  # no evaluation: no quality lines
  assert f"    dcgan-jax --workdir {w}   (the same command as this run's resumes it)" in text
  assert text.endswith(f"    tensorboard --logdir {w}")


@pytest.mark.slow  # trains a run
def test_a_run_ends_with_its_summary(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  config = tiny_config(4)
  config.evaluator, config.eval_every_steps, config.eval_num_samples = "classifier", 2, 20
  train.train_and_evaluate(config, str(tmp_path))
  last = caplog.records[-1].getMessage()
  assert last.startswith("run finished: step 4 of 4 (4 steps in this run, ")
  assert "classifier_fid of G: final " in last and "ema_classifier_fid of G's EMA" in last
  assert str(tmp_path / "quality.png") in last and str(tmp_path / "best") in last
  assert f"--mode sample --workdir {tmp_path}" in last
