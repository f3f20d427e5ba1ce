"""Two processes on localhost (CPU collectives: gloo) train one class-conditional run through
main.py (each image's label travels with it to the process that reads it): both end with the
same parameters, each reads only its half of every batch, only process 0 writes
files besides checkpoints, and the run, resumed by both processes and then by one, equals a
one-process run on the same global batch."""

import csv
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # runs the program in subprocesses

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Runs main.py as `python main.py ...` would, recording: every file this process opens for
# writing (audit hook), the batch rows it reads, and its final parameters.
_DRIVER = """
import json, os, runpy, sys
out, process = sys.argv[1], sys.argv[2]
workdir = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--workdir="))
written, rows = set(), []

def audit(event, args):
  if event == "open" and isinstance(args[0], str) and args[0].startswith(workdir):
    mode, flags = args[1], args[2]
    if (mode and any(c in mode for c in "wax+")) or (
        not mode and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
      written.add(os.path.relpath(args[0], workdir))
  if event == "os.rename" and isinstance(args[1], str) and args[1].startswith(workdir):
    written.add(os.path.relpath(args[1], workdir))  # os.replace of a finished temporary file
sys.addaudithook(audit)

import jax
import numpy as np
from dcgan_jax import parallel, train
global_array, train_and_evaluate = parallel.global_array, train.train_and_evaluate

def recording_global_array(shape, sharding, read):
  def recorded(index):
    if len(shape) == 5:  # (K, B, S, S, C) image chunks: the rows of the batch axis
      rows.append([index[1].start or 0, shape[1] if index[1].stop is None else index[1].stop])
    return read(index)
  return global_array(shape, sharding, recorded)

def recording_train(config, workdir):
  state = train_and_evaluate(config, workdir)
  leaves = jax.tree.leaves(parallel.local_copy((state.g_params, state.d_params)))
  np.save(f"{out}/params_{process}.npy", np.concatenate([np.ravel(x) for x in leaves]))
  return state

parallel.global_array, train.train_and_evaluate = recording_global_array, recording_train
sys.argv = [sys.argv[3]] + sys.argv[4:]
try:
  runpy.run_path(sys.argv[0], run_name="__main__")
finally:
  with open(f"{out}/record_{process}.json", "w") as f:
    json.dump({"written": sorted(written), "rows": sorted(set(map(tuple, rows)))}, f)
"""

_CONFIG = ["--config.image_size=32", "--config.ngf=8", "--config.ndf=8", "--config.nz=16",
           "--config.batch_size=8", "--config.log_every_steps=2",
           "--config.checkpoint_every_steps=2", "--config.sample_every_steps=2",
           "--config.num_sample_images=4", "--config.seed=3", "--config.evaluator=classifier",
           "--config.eval_every_steps=2", "--config.eval_num_samples=64",
           "--config.conditional=True"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(tmp_path, workdir, process: str, steps: int, devices: int, *extra: str):
  env = dict(os.environ, PYTHONPATH=str(ROOT),
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  # Two processes without conftest's shared compilation cache: a two-process run that used it
  # hung once (each process compiling on its own is what these tests check). The one-process
  # runs share it: the second compiles nothing.
  if "--num_processes=2" in extra:
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
  args = [sys.executable, str(tmp_path / "driver.py"), str(tmp_path), process,
          str(ROOT / "main.py"), f"--workdir={workdir}", f"--config.num_train_steps={steps}",
          *_CONFIG, *extra]
  return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, cwd=tmp_path)


def _finish(proc) -> str:
  try:
    _, err = proc.communicate(timeout=300)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise
  assert proc.returncode == 0, err[-3000:]
  return err


def _rows(workdir: pathlib.Path) -> list[dict]:
  with open(workdir / "metrics.csv") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A two-process run to step 2, resumed by two processes to 4 and by one process to 6;
  a one-process run to 6."""
  tmp = tmp_path_factory.mktemp("multiprocess")
  (tmp / "driver.py").write_text(_DRIVER)
  for steps in (2, 4):
    port = _free_port()
    pair = [_start(tmp, tmp / "pair", f"{i}_{steps}", steps, 2,
                   f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                   f"--process_id={i}") for i in (0, 1)]
    stderr = [_finish(p) for p in pair]
  record = [[json.loads((tmp / f"record_{i}_{steps}.json").read_text()) for i in (0, 1)]
            for steps in (2, 4)]
  params = [np.load(tmp / f"params_{i}_4.npy") for i in (0, 1)]
  pair_rows = _rows(tmp / "pair")
  _finish(_start(tmp, tmp / "pair", "resumed", 6, 1))
  _finish(_start(tmp, tmp / "single", "single", 6, 1))
  return dict(tmp=tmp, stderr=stderr, record=record, params=params, pair_rows=pair_rows)


def test_both_processes_end_with_the_same_parameters(runs):
  a, b = runs["params"]
  assert a.size > 10_000
  np.testing.assert_array_equal(a, b)


def test_each_process_reads_only_its_half_of_each_batch(runs):
  # Two devices per process, four in all: process 0 holds rows 0-1 and 2-3, process 1 rows 4-7.
  for first, second in runs["record"]:
    assert first["rows"] == [[0, 2], [2, 4]]
    assert second["rows"] == [[4, 6], [6, 8]]


def test_only_process_0_writes_files_besides_checkpoints(runs):
  def outside_checkpoints(record):
    return {p for p in record["written"]
            if not p.startswith(("checkpoints", "best", ".write_probe_"))}  # (the probe is removed)
  for steps, (first, second) in zip((2, 4), runs["record"]):
    assert {"metrics.csv", "config.json", "classes.json", "losses.png", "samples.png",
            f"samples/step_{steps:07d}.png"} <= outside_checkpoints(first)
    assert outside_checkpoints(second) == set()
  assert "resuming at step 2 of 4" in runs["stderr"][0] and "step 4" in runs["stderr"][0]
  assert " I1" not in f"\n{runs['stderr'][1]}".replace("\n", " ")  # no INFO lines: no logs
  assert [r["step"] for r in runs["pair_rows"]] == ["2", "4"]  # each row written once
  assert sorted(os.listdir(runs["tmp"] / "pair" / "checkpoints")) == ["2", "4", "6"]


def test_process_0_evaluates_and_all_keep_the_same_best_checkpoint(runs):
  rows = runs["pair_rows"]
  best = min(rows, key=lambda r: float(r["classifier_fid"]))
  assert all(float(r["classifier_fid"]) > 0 for r in rows)
  assert all(0 <= float(r["class_accuracy"]) <= 1 for r in rows)  # judged on the ten digits
  # The pair's best by step 4, unless the resumed step 6 beat it.
  kept = os.listdir(runs["tmp"] / "pair" / "best")
  six = _rows(runs["tmp"] / "pair")[-1]
  expected = "6" if float(six["classifier_fid"]) < float(best["classifier_fid"]) else best["step"]
  assert kept == [expected]


def test_two_processes_compute_what_one_computes_and_one_resumes_their_run(runs):
  pair, single = _rows(runs["tmp"] / "pair"), _rows(runs["tmp"] / "single")
  assert [r["step"] for r in pair] == [r["step"] for r in single] == ["2", "4", "6"]
  for p, s in zip(pair, single):
    for key in ("loss_d", "loss_g", "d_x", "d_g_z1", "d_g_z2", "classifier_fid",
                "class_accuracy"):
      assert float(p[key]) == pytest.approx(float(s[key]), rel=1e-4), (p["step"], key)
  resumed, straight = np.load(runs["tmp"] / "params_resumed.npy"), np.load(
      runs["tmp"] / "params_single.npy")
  np.testing.assert_allclose(resumed, straight, rtol=1e-3, atol=1e-5)
