"""Golden numbers of a tiny run of the embedded default (R1; G's EMA at decay 0.9 so that six
steps move it): its metrics rows, its sample grid and its final state.

These pin results, not code. Update them only for a change that is meant to change what a
run computes (say which in the commit); a refactoring must leave them exactly as they are.
"""

import os

import jax
import numpy as np
import pytest
from PIL import Image

from dcgan_jax import metrics, train
from conftest import tiny_config

# XLA's CPU float32 arithmetic: a GPU runs float32 convolutions as TF32 by default and fuses
# otherwise, so its numbers are other (exact run to run there: steps_test, train_test).
pytestmark = [pytest.mark.slow, pytest.mark.xla_default, pytest.mark.skipif(  # trains a run
    jax.default_backend() != "cpu",
    reason=f"the golden numbers are XLA CPU's arithmetic; this backend is {jax.default_backend()}")]

_UPDATE = ("golden numbers changed: update them only for a change meant to change results "
           "(and say so in the commit); a refactoring must keep them")

_ROWS = [  # step, loss_d, loss_g, d_x, d_g_z1, d_g_z2, d_penalty (R1) as metrics.csv writes them
    ("2", "1.42746", "0.676103", "0.529508", "0.537338", "0.513878", "0.163878"),
    ("4", "1.33523", "0.681749", "0.56776", "0.531456", "0.508817", "0.156693"),
    ("6", "1.20656", "0.697947", "0.637668", "0.525426", "0.500503", "0.132338"),
]
_GRID_MEAN = 108.84918367346938
_STATE_ABS_SUMS = {"g_params": 1039.5315248550226, "d_params": 222.90615090485085,
                   "g_ema_params": 1039.3511257367945, "g_batch_stats": 30.936890243090602,
                   "d_batch_stats": 8.259150963345746}


@pytest.fixture(scope="module")
def golden_run(tmp_path_factory):
  config = tiny_config(6)
  config.g_ema_decay = 0.9
  workdir = str(tmp_path_factory.mktemp("golden"))
  return workdir, train.train_and_evaluate(config, workdir)


def test_metrics_rows_are_the_golden_ones(golden_run):
  workdir, _ = golden_run
  rows = metrics.read_metrics(os.path.join(workdir, "metrics.csv"))
  got = [tuple(r[k] for k in ("step", "loss_d", "loss_g", "d_x", "d_g_z1", "d_g_z2", "d_penalty"))
         for r in rows]
  assert got == _ROWS, _UPDATE


def test_sample_grid_is_the_golden_one(golden_run):
  workdir, _ = golden_run
  pixels = np.asarray(Image.open(os.path.join(workdir, "samples.png")))
  assert pixels.shape == (70, 70), _UPDATE
  # One pixel rounded the other way on another CPU moves the mean by 1/4900.
  assert pixels.mean() == pytest.approx(_GRID_MEAN, abs=0.005), _UPDATE


def test_final_state_is_the_golden_one(golden_run):
  _, state = golden_run
  for name, expected in _STATE_ABS_SUMS.items():
    leaves = jax.tree.leaves(getattr(state, name))
    got = float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in leaves))
    assert got == pytest.approx(expected, rel=1e-6), f"{name}: {_UPDATE}"
