"""The public API: presets with checked overrides, fit, and a loaded run's images."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import dcgan_jax
from dcgan_jax import configuration, sampling
from dcgan_jax import images as images_lib
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
  run = dcgan_jax.fit(config, workdir)
  assert isinstance(run, dcgan_jax.Run) and run.step == 3 and int(run.train_state.step) == 3
  assert run.ema  # the run kept G's EMA: what it gives without asking
  for a, b in zip(jax.tree.leaves(run.state.g_ema_params),
                  jax.tree.leaves(run.train_state.g_ema_params)):
    np.testing.assert_array_equal(a, b)  # the latest checkpoint is the final state
  again = dcgan_jax.fit(config, workdir)  # resumed: nothing left to train
  assert again.step == 3 and int(again.train_state.step) == 3
  return workdir


@pytest.mark.slow
def test_generate_and_interpolate_are_sample_modes_images(run_dir):
  run = dcgan_jax.load(run_dir)
  assert isinstance(run, dcgan_jax.Run) and run.step == 3 and run.config.ngf == 8
  assert run.ema and run.train_state is None  # G's EMA by default, as sample mode's
  images = run.generate(5, seed=4, batch_size=4)
  assert images.shape == (5, 32, 32, 1) and images.dtype == np.uint8
  paths = sampling.sample_from_workdir(run_dir, seed=4, num_images=5, grid_size=4,
                                       interpolation_frames=5)
  assert all("_ema" in os.path.basename(p) or "_ema" in p for p in paths)
  singles = [np.asarray(Image.open(p))[..., None] for p in paths[1:6]]
  np.testing.assert_array_equal(images, np.stack(singles))
  frames = run.interpolate(4, 5, frames=5, batch_size=4)
  strip = np.asarray(Image.open(paths[-1]))
  for i in range(5):
    np.testing.assert_array_equal(frames[i, ..., 0], strip[2:34, 2 + 34 * i:34 * (i + 1)])
  np.testing.assert_array_equal(dcgan_jax.load(run_dir, ema=True).generate(5, 4, 4), images)
  g = dcgan_jax.load(run_dir, ema=False)
  assert not g.ema
  g_images = g.generate(5, seed=4, batch_size=4)
  assert g_images.shape == images.shape and not np.array_equal(g_images, images)
  g_paths = sampling.sample_from_workdir(run_dir, seed=4, num_images=5, grid_size=4, ema=False)
  assert "_ema" not in g_paths[0]
  np.testing.assert_array_equal(
      g_images, np.stack([np.asarray(Image.open(p))[..., None] for p in g_paths[1:6]]))


@pytest.mark.slow
def test_generate_takes_latents_and_the_variables_serve_a_users_own_code(run_dir):
  run = dcgan_jax.load(run_dir)
  z = sampling.fixed_noise(4, 5, run.config.nz, sampling.SAMPLE_SALT)
  # the seed's own latents give the seed's images
  np.testing.assert_array_equal(run.generate(z=z, batch_size=4), run.generate(5, 4, 4))
  np.testing.assert_array_equal(run.generate(5, z=np.asarray(z, np.float64), batch_size=4),
                                run.generate(5, 4, 4))
  mine = np.random.default_rng(0).normal(size=(3, run.config.nz)).astype(np.float32)
  x = run.generator.apply(run.g_variables, mine, train=False)  # a user's own call
  assert x.shape == (3, 32, 32, 1) and float(np.abs(x).max()) <= 1.0
  np.testing.assert_array_equal(run.generate(z=mine, bn_mode="eval"), images_lib.to_uint8(x))
  assert run.g_variables["params"] is run.state.g_ema_params
  g = dcgan_jax.load(run_dir, ema=False)
  assert g.g_variables["params"] is g.state.g_params
  nz = run.config.nz
  for z_bad, message in ((np.zeros((2, nz + 1)), f"z: shape (2, {nz + 1}); latents are (N, nz)"),
                         (np.zeros(nz), f"z: shape ({nz},)"),
                         (np.zeros((0, nz)), "z: shape (0,"),
                         (np.full((2, nz), np.nan), "z: holds a value that is not finite"),
                         (np.full((2, nz), 1e300), "z: holds a value that is not finite"),
                         (np.array([["a"] * nz]), "z: dtype <U1; latents are real numbers")):
    with pytest.raises(UsageError, match=None) as e:
      run.generate(z=z_bad)
    assert str(e.value).startswith(message), str(e.value)
  with pytest.raises(UsageError, match=r"n=4 with 5 latents z"):
    run.generate(4, z=z)
  with pytest.raises(UsageError, match=r"give n \(how many images\) or z"):
    run.generate()


@pytest.mark.slow
def test_the_apis_errors_name_its_arguments_and_the_clis_its_flags(run_dir, tmp_path):
  from dcgan_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  missing = str(tmp_path / "nothing")
  with pytest.raises(UsageError) as e:
    dcgan_jax.load(missing)
  assert str(e.value) == f"workdir={missing!r} has no config.json: train there first"
  with pytest.raises(UsageError) as e:
    workdir_lib.restore(missing)  # the CLI's path
  assert str(e.value) == f"--workdir={missing!r} has no config.json: train there first"
  config = dcgan_jax.get_config(ngf=8, ndf=8, batch_size=16, num_train_steps=3, evaluator="",
                                g_ema_decay=0.5, seed=1)
  with pytest.raises(UsageError) as e:
    dcgan_jax.fit(config, run_dir)
  assert str(e.value) == (f"workdir={run_dir!r} holds a run trained with config.seed=0 (its "
                          "config.json), this config has 1: resume it with config.seed=0, or "
                          "use another workdir")
  with pytest.raises(UsageError) as e:
    dcgan_jax.load(run_dir).evaluate()
  assert str(e.value) == (f"workdir={run_dir!r} was trained without an evaluator: give "
                          "evaluator='classifier' (digits) or evaluator='inception' with "
                          "inception_weights")


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
  run = dcgan_jax.load(run_dir, ema=False)
  values = run.evaluate(evaluator="classifier", num_samples=64)
  assert values["classifier_fid"] > 0 and 1 <= values["classes_present"] <= 10
  assert "ema_classifier_fid" in values  # the run kept G's EMA: measured beside G
  ema = dcgan_jax.load(run_dir, ema=True).evaluate(evaluator="classifier", num_samples=64)
  assert ema["classifier_fid"] == pytest.approx(values["ema_classifier_fid"], rel=1e-5)


class _JaxOnAGpu:
  """device.py's view of JAX in a kernel where JAX already runs on a GPU."""

  def __getattr__(self, name):
    return (lambda: "gpu") if name == "default_backend" else getattr(jax, name)


@pytest.mark.slow
def test_fit_where_jax_already_runs_on_a_gpu_with_the_other_setting_goes_on(
    tmp_path, monkeypatch, caplog):
  from dcgan_jax import device  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(device, "backends_started", lambda: True)
  monkeypatch.setattr(device, "jax", _JaxOnAGpu())
  monkeypatch.setenv("XLA_FLAGS", "")  # the kernel's JAX started without the flag
  config = dcgan_jax.get_config(ngf=8, ndf=8, batch_size=16, num_train_steps=2,
                                log_every_steps=2, checkpoint_every_steps=2,
                                sample_every_steps=2, num_sample_images=4, evaluator="",
                                steps_per_dispatch=1, deterministic=True)
  workdir = tmp_path / "run"
  with caplog.at_level("INFO"):
    run = dcgan_jax.fit(config, str(workdir))
  assert run.step == 2 and config.deterministic is True  # the caller's config is its own
  assert json.loads((workdir / "config.json").read_text())["deterministic"] is False
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert any(w.startswith("config.deterministic=True cannot take effect: JAX already runs on "
                          "the GPU") and "reruns and resumes are not bitwise equal" in w
             for w in warnings), warnings
  summary = next(r.getMessage() for r in caplog.records if "run finished" in r.getMessage())
  assert ("note: config.deterministic=True could not take effect (JAX already ran on the GPU): "
          "this run trained with False, as its config.json says") in summary
