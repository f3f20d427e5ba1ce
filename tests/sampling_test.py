"""Sampling from a trained workdir: grids, single images, seeds and BatchNorm modes."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from dcgan_jax import configuration, sampling, train
from dcgan_jax.errors import UsageError
from train_test import tiny_config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("sample_run"))
  train.train_and_evaluate(tiny_config(3), path)
  return path


def test_grid_and_single_images(workdir):
  paths = sampling.sample_from_workdir(workdir, seed=1, num_images=3, grid_size=9)
  assert paths[0].endswith("samples/sample_step0000003_seed1_train.png")
  assert Image.open(paths[0]).size == (3 * 34 + 2, 3 * 34 + 2)
  assert len(paths) == 4 and all(Image.open(p).size == (32, 32) for p in paths[1:])


def test_seed_fixes_the_images(workdir):
  a = np.asarray(Image.open(sampling.sample_from_workdir(workdir, seed=5, grid_size=4)[0]))
  b = np.asarray(Image.open(sampling.sample_from_workdir(workdir, seed=5, grid_size=4)[0]))
  c = np.asarray(Image.open(sampling.sample_from_workdir(workdir, seed=6, grid_size=4)[0]))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_bn_modes_give_different_images(workdir):
  train_mode = sampling.sample_from_workdir(workdir, seed=2, grid_size=4, bn_mode="train")[0]
  eval_mode = sampling.sample_from_workdir(workdir, seed=2, grid_size=4, bn_mode="eval")[0]
  assert eval_mode.endswith("_eval.png")
  assert not np.array_equal(np.asarray(Image.open(train_mode)), np.asarray(Image.open(eval_mode)))


def test_workdir_from_before_later_config_fields(workdir):
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    saved = json.load(f)
  older = {k: v for k, v in saved.items() if k not in configuration.ADDED_FIELD_DEFAULTS}
  with open(path, "w") as f:
    json.dump(older, f)
  try:
    assert Image.open(sampling.sample_from_workdir(workdir, grid_size=4)[0]).size == (70, 70)
  finally:
    with open(path, "w") as f:
      json.dump(saved, f)


def test_errors_name_the_problem(workdir, tmp_path):
  with pytest.raises(UsageError, match="has no config.json"):
    sampling.sample_from_workdir(str(tmp_path))
  with pytest.raises(UsageError, match="bn_mode='test'"):
    sampling.sample_from_workdir(workdir, bn_mode="test")
