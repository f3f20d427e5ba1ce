"""TensorBoard event files: read back with TensorBoard's own reader, scalars equal to
metrics.csv, grids as images, the config as text, no step twice after a resume."""

import os
import shutil

import pytest
from tensorboard.backend.event_processing import event_accumulator

from dcgan_jax import metrics, summaries, train
from conftest import tiny_config


def _read(workdir) -> event_accumulator.EventAccumulator:
  acc = event_accumulator.EventAccumulator(
      os.path.join(workdir, "tensorboard"),
      size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0,
                     event_accumulator.TENSORS: 0})
  acc.Reload()
  return acc


def test_crc32c_of_the_check_string():
  assert summaries.crc32c(b"123456789") == 0xE3069283  # the Castagnoli check value
  assert summaries.crc32c(b"") == 0


@pytest.mark.slow
def test_a_run_writes_its_rows_grids_and_config(tmp_path):
  train.train_and_evaluate(tiny_config(6), str(tmp_path))
  acc = _read(tmp_path)
  rows = metrics.read_metrics(str(tmp_path / "metrics.csv"))
  for column in ("loss_d", "loss_g", "d_x", "d_g_z1", "d_g_z2", "epoch", "seconds"):
    got = [(e.step, e.value) for e in acc.Scalars(column)]
    assert [s for s, _ in got] == [2, 4, 6], column
    assert [v for _, v in got] == pytest.approx([float(r[column]) for r in rows], rel=1e-5)
  assert "step" not in acc.Tags()["scalars"]
  grids = acc.Images("samples")
  assert [(g.step, g.width, g.height) for g in grids] == [(3, 70, 70), (6, 70, 70)]
  [config] = acc.Tensors("config")
  assert b'"num_train_steps": 6' in config.tensor_proto.string_val[0]


@pytest.mark.slow
def test_a_resumed_run_continues_the_curves_without_a_step_twice(tmp_path):
  train.train_and_evaluate(tiny_config(4), str(tmp_path))  # rows 2, 4; checkpoints 3, 4
  shutil.rmtree(tmp_path / "checkpoints" / "4")  # as if killed after row 4, before its save
  train.train_and_evaluate(tiny_config(6), str(tmp_path))  # resumes at 3: rows 4, 6 again
  rows = metrics.read_metrics(str(tmp_path / "metrics.csv"))
  assert [r["step"] for r in rows] == ["2", "4", "6"]
  got = [(e.step, e.value) for e in _read(tmp_path).Scalars("loss_d")]
  assert [s for s, _ in got] == [2, 4, 6]
  assert [v for _, v in got] == pytest.approx([float(r["loss_d"]) for r in rows], rel=1e-5)


@pytest.mark.slow
def test_off_writes_no_event_file(tmp_path):
  config = tiny_config(2)
  config.tensorboard = False
  train.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "tensorboard").exists()
