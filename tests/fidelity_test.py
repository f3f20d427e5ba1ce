"""Training computes PyTorch's maths: converted tutorial networks trained for K = 3 iterations in
float64 equal PyTorch's float64 run (Adam's first moments and every running statistic), and in
float32 G's and D's running statistics follow PyTorch's (benchmarks/drift.py runs both sides)."""

import json

import jax
import pytest

from benchmarks import drift

# Compiles the networks and runs both libraries; XLA's arithmetic as users' programs compute it.
pytestmark = [pytest.mark.slow, pytest.mark.xla_default]

torch = pytest.importorskip("torch")  # installed in CI (.ci/run)


@pytest.fixture(autouse=True)
def _full_float32():
  """PyTorch's CPU float32 is the reference: dcgan-jax's float32 runs at full float32 precision
  on every backend (XLA runs float32 convolutions as TF32 on GPUs by default; on CPUs
  'highest' is what runs anyway)."""
  with jax.default_matmul_precision("highest"):
    yield

# size, channels, batch, ngf = ndf, seed: the two settings of benchmarks/NOTES.md's drift table.
_SETTINGS = [(64, 3, 16, 16, 1), (32, 1, 32, 8, 1)]


def _both_sides(size, channels, batch, width, seed, dtype, iterations=3):
  net_g, net_d = drift.torch_pair(size, channels, seed, width, width, nz=100)
  images = drift.real_batches(size, channels, batch, iterations, seed)
  return drift.both_sides(net_g, net_d, images, dtype, seed)


@pytest.mark.parametrize("size,channels,batch,width,seed", _SETTINGS)
def test_float64_iterations_equal_pytorch_float64(size, channels, batch, width, seed):
  ours, theirs = _both_sides(size, channels, batch, width, seed, "float64")
  assert len(ours) == 3
  for k, (got, want) in enumerate(zip(ours, theirs), 1):
    assert sorted(got) == sorted(want)
    moments = drift.relative_errors(got, want)
    running = drift.relative_errors(got, want, "running")
    assert len(moments) == (24 if size == 64 else 18)
    assert max(moments.values()) < 1e-6, (k, drift.worst(moments))
    # G's and D's running averages, D's moved by the G step's pass too, the variance unbiased.
    assert max(running.values()) < 1e-6, (k, drift.worst(running))


def test_float32_running_statistics_follow_pytorch():
  ours, theirs = _both_sides(32, 1, 32, 8, 1, "float32")
  running = drift.relative_errors(ours[-1], theirs[-1], "running")
  assert {k.split(".")[0] for k in running} == {"netG", "netD"}
  assert max(running.values()) < 1e-5, drift.worst(running)


def test_the_drift_benchmark_writes_its_lines(capsys):
  drift.main(["--size", "32", "--channels", "1", "--batch", "8", "--ngf", "4", "--ndf", "4",
              "--nz", "8", "--iterations", "2", "--seeds", "3"])
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  runs, summaries = lines[:3], lines[3:]
  assert [(r["side"], r["dtype"]) for r in runs] == [
      ("jax", "float32"), ("jax", "float64"), ("torch", "float32")]
  assert all(len(r["moments"]) == 2 and r["seed"] == 3 for r in runs)
  assert runs[1]["moments"][-1] < 1e-6  # float64 against PyTorch's float64
  assert all(0 < r["moments"][0] < 1e-4 for r in (runs[0], runs[2]))  # float32: rounding
  assert [s["summary"] for s in summaries] == ["jax", "torch"]
  assert all(s["seeds"] == 1 and s["float32_within_tolerance_at_iteration_2"] in (0, 1)
             for s in summaries)
