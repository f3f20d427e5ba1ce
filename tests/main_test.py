"""The command line: bad input exits with status 2 and one line, touching nothing."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from dcgan_jax.configs import default
from conftest import make_image_folder

pytestmark = pytest.mark.slow  # runs the program in subprocesses

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_main(*args, cwd=None):
  return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True,
                        text=True, cwd=cwd or ROOT, timeout=300)


def snapshot(path: pathlib.Path) -> dict:
  return {str(p.relative_to(path)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
          for p in sorted(path.rglob("*"))}


@pytest.fixture
def used_workdir(tmp_path):
  """A workdir with earlier outputs in it, which a failed run must leave alone."""
  workdir = tmp_path / "run"
  (workdir / "checkpoints" / "100").mkdir(parents=True)
  (workdir / "metrics.csv").write_text("step,epoch,loss_d,loss_g\n100,1,0.5,2.0\n")
  (workdir / "config.json").write_text(json.dumps(default.get_config().to_dict()))
  return workdir


@pytest.mark.parametrize("args,names", [
    (["--config.no_such_field=1"], "no_such_field"),
    (["--config.num_steps=3"], "no field 'num_steps' (Did you mean \"num_train_steps\""),
    (["--num_processes=2"], "--coordinator_address, --num_processes and --process_id go together"),
    (["--coordinator_address=localhost:1", "--num_processes=2", "--process_id=2"],
     "--process_id=2 is not in [0, --num_processes=2)"),
    (["--mode=sample", "--num_processes=2"], "--mode sample runs in one process"),
    (["--config.image_size=48"], "config.image_size=48"),
    (["--config.image_size=abc"], "--config.image_size=abc"),
    (["--config=/nonexistent/c.py"], "/nonexistent/c.py"),
    (["--config.dataset=tfds:no_such_dataset"], "no_such_dataset"),
    (["--config.dataset=mnist"], "config.dataset='mnist'"),
    (["--config.dataset=imagefolder", "--config.data_dir=EMPTY"], "contains no images"),
    (["--config.dataset=imagefolder", "--config.data_dir=MISSING"], "does not exist"),
])
def test_bad_input_exits_2_with_one_line_and_touches_nothing(used_workdir, tmp_path, args, names):
  (tmp_path / "empty").mkdir()
  args = [a.replace("EMPTY", str(tmp_path / "empty")).replace("MISSING", str(tmp_path / "nope"))
          for a in args]
  before = snapshot(used_workdir)
  result = run_main(f"--workdir={used_workdir}", *args)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], result.stderr
  assert snapshot(used_workdir) == before


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  result = run_main(f"--workdir={blocker / 'run'}")
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()  # the data is checked (and cached) first
  errors = [line for line in lines if line.startswith("error: ")]
  assert errors == lines[-1:] and "cannot be written" in errors[0] and str(blocker) in errors[0]
  assert blocker.read_text() == "x"


def test_train_then_sample_from_the_command_line(tmp_path):
  make_image_folder(tmp_path / "images", count=8, size=(40, 48))
  workdir = tmp_path / "run"
  result = run_main(f"--workdir={workdir}", "--config", "imagefolder",  # a preset's name
                    f"--config.data_dir={tmp_path / 'images'}", "--config.image_size=32",
                    "--config.ngf=8", "--config.ndf=8", "--config.batch_size=4",
                    "--config.num_train_steps=2", "--config.num_sample_images=4",
                    cwd=tmp_path)  # the default config path must not depend on the cwd
  assert result.returncode == 0, result.stderr[-2000:]
  assert {"metrics.csv", "samples.png", "losses.png", "config.json", "checkpoints",
          "samples"} <= set(os.listdir(workdir))
  assert "training on 1 x cpu (cpu), jax " in result.stderr  # the device, before training
  assert json.loads((workdir / "config.json").read_text())["deterministic"] is True
  result = run_main("--mode=sample", f"--workdir={workdir}", "--num_images=2", "--grid_size=4",
                    "--sample_seed=3")
  assert result.returncode == 0, result.stderr[-2000:]
  assert sorted(os.listdir(workdir / "samples" / "step0000002_seed3_train")) == [
      "00000.png", "00001.png"]


def test_sample_without_a_checkpoint_is_a_clear_error(tmp_path):
  result = run_main("--mode=sample", f"--workdir={tmp_path}")
  assert result.returncode == 2 and "has no config.json" in result.stderr


def test_eval_mode_reports_latest_best_floor_and_untrained(tmp_path):
  workdir = tmp_path / "run"
  common = ["--config.ngf=8", "--config.ndf=8", "--config.batch_size=16",
            "--config.eval_num_samples=100", "--config.num_sample_images=4"]
  result = run_main(f"--workdir={workdir}", "--config.num_train_steps=4",
                    "--config.eval_every_steps=2", "--config.g_ema_decay=0.5", *common)
  assert result.returncode == 0, result.stderr[-2000:]
  result = run_main("--mode=eval", f"--workdir={workdir}", "--eval_num_samples=200")
  assert result.returncode == 0, result.stderr[-2000:]
  with open(workdir / "eval.json") as f:
    report = json.load(f)
  # At most eval_num_samples real images, drawn from the classifier's split by the seed.
  assert report["generated_images"] == 200 and report["reference_images"] == 200
  results = report["results"]
  assert list(results) == ["real_held_out", "untrained", "latest", "best"]
  assert results["latest"]["step"] == 4 and results["untrained"]["step"] == 0
  assert results["real_held_out"]["images"] == 200
  for name in ("untrained", "latest", "best"):
    assert {"classifier_fid", "ema_classifier_fid", "classes_present"} <= set(results[name])
  floor = results["real_held_out"]["classifier_fid"]
  assert floor < results["latest"]["classifier_fid"] and floor < results["untrained"][
      "classifier_fid"]
  assert "real_held_out" in result.stdout and "classifier_fid" in result.stdout

  result = run_main("--mode=sample", f"--workdir={workdir}", "--checkpoint=best", "--ema",
                    "--grid_size=4", "--interpolation_frames=3")
  assert result.returncode == 0, result.stderr[-2000:]
  best_step = results["best"]["step"]
  assert (workdir / "samples" / f"sample_step{best_step:07d}_seed0_train_ema.png").exists()
  assert (workdir / "samples" /
          f"interpolation_step{best_step:07d}_seed0_train_ema_to_seed1.gif").exists()
  for flag, name in ((None, "_train_ema.png"), ("--noema", "_train.png")):  # EMA by default
    result = run_main("--mode=sample", f"--workdir={workdir}", "--grid_size=4", "--sample_seed=5",
                      *([flag] if flag else []))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (workdir / "samples" / f"sample_step{results['latest']['step']:07d}_seed5{name}"
            ).exists(), flag


def test_eval_mode_needs_an_evaluator(tmp_path):
  workdir = tmp_path / "run"
  result = run_main(f"--workdir={workdir}", "--config.num_train_steps=2", "--config.ngf=8",
                    "--config.ndf=8", "--config.batch_size=16", "--config.evaluator=",
                    "--config.num_sample_images=4")
  assert result.returncode == 0, result.stderr[-2000:]
  result = run_main("--mode=eval", f"--workdir={workdir}")
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "trained without an evaluator" in lines[0]
  result = run_main("--mode=eval", f"--workdir={workdir}", "--evaluator=inception",
                    f"--inception_weights={tmp_path / 'missing.pth'}")
  assert result.returncode == 2 and "missing.pth" in result.stderr
  assert "download https://github.com/mseitzer" in result.stderr
