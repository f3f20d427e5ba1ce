"""Class-conditional runs end to end: the classes from the data into the workdir, labels through
the data order, feeding and resume, a grid row per class, and every refusal in one line."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from dcgan_jax import metrics, sampling, train
from dcgan_jax import workdir as workdir_lib
from dcgan_jax.errors import UsageError
from conftest import tiny_config, trees_close

pytestmark = pytest.mark.slow  # trains runs

_COLORS = {"ant": (0, 0, 255), "bee": (0, 255, 0), "cat": (255, 0, 0)}


def _class_folder(root, names=("ant", "bee", "cat"), per_class=6):
  """One subfolder of solid-colour 40x40 images per class (one of them nested)."""
  for name in names:
    for i in range(per_class):
      where = root / name / ("deep" if i == 0 else "")
      where.mkdir(parents=True, exist_ok=True)
      pixels = np.full((40, 40, 3), _COLORS.get(name, (128, 128, 128)), np.uint8)
      pixels[i % 40] = 255 - pixels[i % 40]  # each image its own
      Image.fromarray(pixels).save(where / f"{i}.png")
  return root


def _config(images, num_steps=4, **fields):
  config = tiny_config(num_steps)
  config.dataset, config.data_dir, config.channels = "imagefolder", str(images), 3
  config.conditional, config.batch_size = True, 4
  config.num_sample_images = 6
  config.update(fields)
  return config


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
  base = tmp_path_factory.mktemp("conditional")
  images = _class_folder(base / "images")
  state = train.train_and_evaluate(_config(images), str(base / "run"))
  return base, state


def test_a_conditional_run_keeps_its_classes_and_draws_a_row_per_class(conditional_run):
  base, state = conditional_run
  run = base / "run"
  assert int(state.step) == 4
  assert json.loads((run / "classes.json").read_text()) == ["ant", "bee", "cat"]
  assert json.loads((run / "config.json").read_text())["conditional"] is True
  assert state.d_params["class_projection"].shape == (3, 32)
  assert state.g_params["Project4x4_0"]["kernel"].shape[-1] == 100 + 3
  rows = metrics.read_metrics(str(run / "metrics.csv"))
  assert [r["step"] for r in rows] == ["2", "4"]
  assert all(np.isfinite(float(r["loss_d"])) for r in rows)
  grid = Image.open(run / "samples.png")
  assert grid.size == (2 * 34 + 2, 3 * 34 + 2)  # 3 classes x 6 // 3 = 2 latents, 32 px
  noise = sampling.grid_noise(0, 6, 100, 3)
  np.testing.assert_array_equal(noise.labels, [0, 0, 1, 1, 2, 2])
  np.testing.assert_array_equal(noise.z[:2], noise.z[2:4])  # the same latents in every row


def test_conditional_resume_equals_an_uninterrupted_run(conditional_run, tmp_path):
  base, straight = conditional_run
  workdir = str(tmp_path / "resumed")
  first = train.train_and_evaluate(_config(base / "images", 2), workdir)
  assert int(first.step) == 2
  resumed = train.train_and_evaluate(_config(base / "images", 4), workdir)
  assert trees_close(jax.device_get(resumed), jax.device_get(straight))
  untimed = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}
                          for r in rows]
  assert untimed(metrics.read_metrics(os.path.join(workdir, "metrics.csv"))) == untimed(
      metrics.read_metrics(str(base / "run" / "metrics.csv")))


def test_labels_gathered_on_the_device_train_as_those_fed_from_the_host(conditional_run,
                                                                       tmp_path):
  base, host = conditional_run
  config = _config(base / "images", data_on_device=True, steps_per_dispatch=2)
  gathered = train.train_and_evaluate(config, str(tmp_path / "gathered"))
  assert trees_close(jax.device_get(gathered), jax.device_get(host), rtol=1e-4, atol=1e-6)


def test_the_labels_matter(conditional_run, tmp_path):
  """The same images under other class names (the folders renamed in another order) train
  another model: the labels reach the steps."""
  base, state = conditional_run
  images = tmp_path / "images"
  shutil.copytree(base / "images", images)
  os.rename(images / "ant", images / "zebra")  # ant's images are now class 2
  other = train.train_and_evaluate(_config(images), str(tmp_path / "run"))
  assert not trees_close(other.d_params, state.d_params, rtol=1e-4)


def test_sampling_and_export_of_a_conditional_workdir(conditional_run, tmp_path):
  base, _ = conditional_run
  workdir = tmp_path / "run"
  shutil.copytree(base / "run", workdir)
  written = sampling.sample_from_workdir(str(workdir), grid_size=6)
  assert Image.open(written[0]).size == (3 * 34 + 2, 2 * 34 + 2)  # classes drawn evenly
  pytest.importorskip("torch")
  from dcgan_jax import convert  # pylint: disable=g-import-not-at-top
  with pytest.raises(UsageError, match="class-conditional run \\(3 classes\\): the PyTorch "
                                       "tutorial's netG and netD have no class input"):
    convert.export_from_workdir(str(workdir), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def _refused(config, workdir, message):
  """Runs config in workdir expecting a one-line UsageError matching message; returns it."""
  with pytest.raises(UsageError, match=message) as e:
    train.train_and_evaluate(config, str(workdir))
  assert "\n" not in str(e.value)
  return str(e.value)


def _listing(folder):
  return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns, p.stat().st_size)
                for p in folder.rglob("*") if p.is_file())


def test_resuming_with_other_classes_or_setting_is_refused_and_nothing_changes(conditional_run,
                                                                              tmp_path):
  base, _ = conditional_run
  workdir = tmp_path / "run"
  shutil.copytree(base / "run", workdir)
  before = _listing(workdir)
  images = tmp_path / "images"
  shutil.copytree(base / "images", images)
  _class_folder(images, names=("dog",), per_class=2)
  _refused(_config(images, 6), workdir, r"trained on 3 classes \['ant', 'bee', 'cat'\] "
                                        r"\(classes.json\); the data has 4:")
  plain = _config(base / "images", 6, conditional=False)
  _refused(plain, workdir, "trained with config.conditional=True .* this config has False")
  assert _listing(workdir) == before


def test_data_without_classes_is_refused_before_anything_is_written(tmp_path):
  loose = _class_folder(tmp_path / "loose")
  Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(loose / "stray.png")
  _refused(_config(loose), tmp_path / "w1", r"has images in the folder itself \(e.g. 'stray.png'\)")
  one = _class_folder(tmp_path / "one", names=("ant",))
  _refused(_config(one), tmp_path / "w2", r"has 1 class \['ant'\]: config.conditional needs two")
  many = _class_folder(tmp_path / "many")
  _refused(_config(many, max_classes=2), tmp_path / "w3",
           "has 3 classes, more than config.max_classes=2")
  assert not any((tmp_path / w).exists() for w in ("w1", "w2", "w3"))


@pytest.mark.parametrize("content, why", [
    ("{}", "is not a list"), ('["a", "a"]', "distinct"), ("[1, 2]", "class names"),
    ('["' + "x" * 2000 + '"]', "at most 1024 characters"), ("[", "cannot be read as JSON")])
def test_a_classes_file_edited_by_hand_is_refused_in_one_line(conditional_run, tmp_path,
                                                              content, why):
  base, _ = conditional_run
  workdir = tmp_path / "run"
  shutil.copytree(base / "run", workdir)
  (workdir / "classes.json").write_text(content)
  with pytest.raises(UsageError, match=why) as e:
    sampling.sample_from_workdir(str(workdir), grid_size=4)
  assert str(e.value).startswith(str(workdir / "classes.json")) and "\n" not in str(e.value)
  (workdir / "classes.json").unlink()
  with pytest.raises(UsageError, match="holds a conditional run without its classes.json"):
    workdir_lib.restore(str(workdir))
