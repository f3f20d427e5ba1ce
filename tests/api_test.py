"""The public API: presets with checked overrides, fit, and a loaded run's images."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import dcgan_jax
from dcgan_jax import configuration, sampling
from dcgan_jax.errors import UsageError

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_presets_load_and_take_overrides(tmp_path):
  config = dcgan_jax.get_config("default", num_train_steps=5, batch_size=16)
  assert (config.num_train_steps, config.batch_size, config.image_size) == (5, 16, 32)
  assert dcgan_jax.get_config("celeba").image_size == 64
  assert dcgan_jax.get_config("imagefolder", data_dir=str(tmp_path)).data_dir == str(tmp_path)
  in_package = {p.stem for p in (ROOT / "dcgan_jax" / "configs").glob("*.py")} - {"__init__"}
  assert set(dcgan_jax.PRESETS) == in_package == {p.stem for p in (ROOT / "configs").glob("*.py")}
  for name in dcgan_jax.PRESETS:  # a clone's configs/NAME.py is the package's preset
    from_clone = configuration.load_config_file(str(ROOT / "configs" / f"{name}.py"))
    assert from_clone.to_dict() == dcgan_jax.get_config(name).to_dict(), name


@pytest.mark.parametrize("preset,overrides,message", [
    ("nope", {}, "preset 'nope' is not one of default, conditional, celeba"),
    ("default", {"num_steps": 5}, "config.num_steps is not a field of configs/default.py "
                                  "(did you mean num_train_steps? a misspelt field would be "
                                  "ignored)"),
    ("default", {"batch_size": 2.5}, "config.batch_size=2.5 is a float; it must be a int"),
    ("default", {"batch_size": 0}, "config.batch_size=0 must be positive"),
    ("default", {"g_learning_rate": float("nan")}, "config.g_learning_rate=nan must be positive"),
])
def test_bad_overrides_are_refused_as_main_refuses_them(preset, overrides, message):
  with pytest.raises(UsageError, match=None) as e:
    dcgan_jax.get_config(preset, **overrides)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_importing_the_package_loads_no_jax():
  out = subprocess.run([sys.executable, "-c", "import sys, dcgan_jax, dcgan_jax.convert\n"
                        "print('jax' in sys.modules, 'dcgan_jax.api' in sys.modules)"],
                       capture_output=True, text=True, check=True, cwd=ROOT, timeout=120)
  assert out.stdout.split() == ["False", "False"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> str:
  workdir = str(tmp_path_factory.mktemp("api_run"))
  config = dcgan_jax.get_config(ngf=8, ndf=8, batch_size=16, num_train_steps=3,
                                log_every_steps=3, checkpoint_every_steps=3,
                                sample_every_steps=3, num_sample_images=4, evaluator="",
                                steps_per_dispatch=1, g_ema_decay=0.5)
  state = dcgan_jax.fit(config, workdir)
  assert int(state.step) == 3
  assert dcgan_jax.fit(config, workdir).step == 3  # resumed: nothing left to train
  return workdir


@pytest.mark.slow
def test_generate_and_interpolate_are_sample_modes_images(run_dir):
  run = dcgan_jax.load(run_dir)
  assert isinstance(run, dcgan_jax.Run) and run.step == 3 and run.config.ngf == 8
  images = run.generate(5, seed=4, batch_size=4)
  assert images.shape == (5, 32, 32, 1) and images.dtype == np.uint8
  paths = sampling.sample_from_workdir(run_dir, seed=4, num_images=5, grid_size=4,
                                       interpolation_frames=5)
  singles = [np.asarray(Image.open(p))[..., None] for p in paths[1:6]]
  np.testing.assert_array_equal(images, np.stack(singles))
  frames = run.interpolate(4, 5, frames=5, batch_size=4)
  strip = np.asarray(Image.open(paths[-1]))
  for i in range(5):
    np.testing.assert_array_equal(frames[i, ..., 0], strip[2:34, 2 + 34 * i:34 * (i + 1)])
  ema = dcgan_jax.load(run_dir, ema=True).generate(5, seed=4, batch_size=4)
  assert ema.shape == images.shape and not np.array_equal(ema, images)


@pytest.mark.slow
def test_bad_requests_name_the_value(run_dir):
  run = dcgan_jax.load(run_dir)
  for call, message in ((lambda: run.generate(0), "n=0 is out of range: 1 to 10,000"),
                        (lambda: run.generate(2, seed=-1), "seed=-1 is out of range"),
                        (lambda: run.interpolate(0, 1, frames=1), "frames=1 is out of range"),
                        (lambda: run.generate(2, bn_mode="test"), "bn_mode='test'"),
                        (lambda: run.evaluate(), "trained without an evaluator")):
    with pytest.raises(UsageError, match=None) as e:
      call()
    assert message in str(e.value)
  with pytest.raises(UsageError, match="checkpoint='newest'"):
    dcgan_jax.load(run_dir, checkpoint="newest")
  with pytest.raises(UsageError, match="has no best checkpoint"):
    dcgan_jax.load(run_dir, checkpoint="best")
  assert not os.path.exists(os.path.join(run_dir, "eval.json"))


@pytest.mark.slow
def test_evaluate_measures_the_checkpoint_as_the_run_does(run_dir):
  run = dcgan_jax.load(run_dir)
  values = run.evaluate(evaluator="classifier", num_samples=64)
  assert values["classifier_fid"] > 0 and 1 <= values["classes_present"] <= 10
  assert "ema_classifier_fid" in values  # the run kept G's EMA: measured beside G
  ema = dcgan_jax.load(run_dir, ema=True).evaluate(evaluator="classifier", num_samples=64)
  assert ema["classifier_fid"] == pytest.approx(values["ema_classifier_fid"], rel=1e-5)
