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
  noise = sampling.grid_noise(0, 6, 100, (0, 1, 2))
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
  assert Image.open(written[0]).size == (2 * 34 + 2, 3 * 34 + 2)  # a row per class
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


def test_a_conditional_run_on_the_digits_measures_its_class_accuracy(tmp_path, caplog):
  from dcgan_jax import run_summary  # pylint: disable=g-import-not-at-top

  config = tiny_config(4)
  config.conditional, config.evaluator = True, "classifier"
  config.eval_every_steps, config.eval_num_samples = 2, 40
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  rows = metrics.read_metrics(os.path.join(workdir, "metrics.csv"))
  for column in ("class_accuracy", "ema_class_accuracy"):
    values = [float(r[column]) for r in rows]
    assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values), column
    # 40 images, 4 of each class: a multiple of 1/40
    assert all(abs(v * 40 - round(v * 40)) < 1e-9 for v in values)
  for column in ("classifier_intra_fid", "ema_classifier_intra_fid"):
    values = [float(r[column]) for r in rows]
    # an untrained G's digits are far from every class's real ones
    assert len(values) == 2 and all(v > float(rows[0]["classifier_fid"]) * 0.1 for v in values)
  text = run_summary.summary(workdir, "finished", 0, 4, 4, 1.0, "ema_classifier_fid")
  assert f"class_accuracy of G: final {float(rows[-1]['class_accuracy']):.4f} at step 4" in text
  assert "ema_class_accuracy of G's EMA: final" in text
  intra = float(rows[-1]["ema_classifier_intra_fid"])
  assert f"ema_classifier_intra_fid of G's EMA: final {intra:.4g} at step 4" in text
  from dcgan_jax import eval_run  # pylint: disable=g-import-not-at-top
  report = eval_run.evaluate_workdir(workdir)
  assert json.loads(open(os.path.join(workdir, "eval.json")).read()) == report
  real, latest = report["results"]["real_held_out"], report["results"]["latest"]
  assert real["class_accuracy"] > 0.9  # the classifier on real digits it never saw
  for c in range(10):  # 40 generated images: 4 of each class, each class's figures
    assert latest[f"class_accuracy_{c}"] in (0.0, 0.25, 0.5, 0.75, 1.0)
  for row in (real, latest):
    figures = [row[f"classifier_intra_fid_{c}"] for c in range(10)
               if f"classifier_intra_fid_{c}" in row]
    assert len(figures) >= 5 and min(figures) >= 0.0
    assert row["classifier_intra_fid"] == pytest.approx(np.mean(figures), rel=1e-12)
  assert latest["ema_classifier_intra_fid"] > real["classifier_intra_fid"]
  table = eval_run.format_report(report)
  assert "classifier_intra_fid" in table and "classifier_intra_fid_3" not in table


def _png(path):
  return np.asarray(Image.open(path))


def test_asking_for_classes_in_sample_mode_and_the_api(conditional_run, tmp_path):
  import dcgan_jax  # pylint: disable=g-import-not-at-top

  base, _ = conditional_run
  workdir = tmp_path / "run"
  shutil.copytree(base / "run", workdir)
  one = sampling.sample_from_workdir(str(workdir), grid_size=4, num_images=4, labels=(1,),
                                     interpolation_frames=3)
  # G's EMA (the run keeps one), as the API's load gives
  assert os.path.basename(one[0]) == "sample_step0000004_seed0_train_ema_class1.png"
  assert _png(one[0]).shape == (2 * 34 + 2, 2 * 34 + 2, 3)  # one class: a square grid
  run = dcgan_jax.load(str(workdir))
  assert run.class_names == ("ant", "bee", "cat")
  asked = run.generate(4, batch_size=4, label=1)
  for i in range(4):  # the API's images are sample mode's
    np.testing.assert_array_equal(_png(one[1 + i]), asked[i])
  assert not np.array_equal(asked, run.generate(4, batch_size=4, label=2))
  np.testing.assert_array_equal(_png(one[-1])[2:34, 2:34],  # the strip's first frame
                                run.interpolate(0, 1, 3, batch_size=4, label=1)[0])
  several = sampling.sample_from_workdir(str(workdir), grid_size=6, labels=(0, 2))
  assert _png(several[0]).shape == (2 * 34 + 2, 3 * 34 + 2, 3)  # a row per class, 3 each
  assert run.generate(6, label=[0, 2]).shape == (6, 32, 32, 3)


@pytest.mark.parametrize("labels, frames, message", [
    ((3,), 0, r"--label=3 is not a class of this run: 0 to 2 \(0 'ant', 1 'bee', 2 'cat'\)"),
    ((-1,), 0, "--label=-1 is not a class of this run"),
    ((0, 1), 3, "an interpolation of a conditional run stays within one class: give --label"),
    (None, 3, "give --label with one class")])
def test_a_wrong_class_is_refused_in_one_line_and_nothing_is_written(conditional_run, tmp_path,
                                                                    labels, frames, message):
  base, _ = conditional_run
  workdir = tmp_path / "run"
  shutil.copytree(base / "run", workdir)
  before = _listing(workdir)
  with pytest.raises(UsageError, match=message) as e:
    sampling.sample_from_workdir(str(workdir), grid_size=4, labels=labels,
                                 interpolation_frames=frames)
  assert "\n" not in str(e.value) and _listing(workdir) == before


def test_labels_of_the_command_line_and_of_an_unconditional_run(folder_run, tmp_path):
  import dcgan_jax  # pylint: disable=g-import-not-at-top

  assert sampling.parse_labels("7") == (7,) and sampling.parse_labels(" 0,3 ,7") == (0, 3, 7)
  assert sampling.parse_labels(None) is None
  for text, bad in (("seven", "'seven'"), ("1,x", "'x'"), ("", "''"), ("1.5", "'1.5'")):
    with pytest.raises(UsageError, match=f"--label={text!r}: {bad} is not a class index"):
      sampling.parse_labels(text)
  workdir = tmp_path / "plain"
  shutil.copytree(folder_run / "run", workdir)
  before = _listing(workdir)
  with pytest.raises(UsageError, match="--label=7 asks for a class, but this run is "
                                       "unconditional"):
    sampling.sample_from_workdir(str(workdir), grid_size=4, labels=(7,))
  run = dcgan_jax.load(str(workdir))
  with pytest.raises(UsageError, match="label=1 asks for a class, but this run is unconditional"):
    run.generate(2, label=1)
  assert _listing(workdir) == before and run.class_names == ()


_HOSTILE = "<img src=x onerror=document.title='owned'>"


@pytest.fixture(scope="module")
def served(conditional_run, tmp_path_factory):
  """The conditional run, one of its classes renamed to HTML (a folder name is anyone's text)."""
  base, _ = conditional_run
  workdir = tmp_path_factory.mktemp("served") / "run"
  shutil.copytree(base / "run", workdir)
  (workdir / "classes.json").write_text(json.dumps(["ant", _HOSTILE, "cat"]))
  return workdir


def test_the_page_endpoints_take_a_class(served):
  import io  # pylint: disable=g-import-not-at-top

  from werkzeug.test import Client  # pylint: disable=g-import-not-at-top

  from dcgan_jax import serve  # pylint: disable=g-import-not-at-top
  explorer = serve.Explorer(str(served))
  client = Client(serve.make_app(explorer))
  before = sampling.traces()
  assert client.get("/api/info").json["classes"] == ["ant", _HOSTILE, "cat"]
  image = lambda url: np.asarray(Image.open(io.BytesIO(client.get(url).get_data())))  # noqa: E731
  every = image("/api/grid.png?seed=3&n=4")
  one = image("/api/grid.png?seed=3&n=4&label=1")
  assert every.shape == one.shape == (2 * 34 + 2, 2 * 34 + 2, 3) and not np.array_equal(every, one)
  assert image("/api/interpolation.png?frames=3&label=2").shape == (36, 3 * 34 + 2, 3)
  for url, message in (("/api/interpolation.png?frames=3", "stays within one class"),
                       ("/api/grid.png?label=3", "label=3 is out of range: 0 to 2"),
                       ("/api/grid.png?label=x", "label='x' is not a whole number")):
    response = client.get(url)
    assert response.status_code == 400 and message in response.json["error"], url
  assert sampling.traces() == before  # every class in the one program compiled at start
  run = __import__("dcgan_jax").load(str(served))  # the page's images are the API's
  np.testing.assert_array_equal(one[2:34, 2:34], run.generate(64, seed=3, label=1)[0])


def test_the_page_offers_the_classes_as_text_and_draws_the_one_picked(served):
  from serve_test import GRID_SHOWN, page_in_chromium, wait_for  # pylint: disable=g-import-not-at-top

  with page_in_chromium(served) as (browser, _):
    first = wait_for(lambda: browser.execute_script(GRID_SHOWN), "the first grid")
    assert "label=" not in first  # every class in turn
    picker = browser.find_element("id", "label")
    assert browser.find_element("id", "class-picker").is_displayed()
    names = [o.text for o in picker.find_elements("tag name", "option")]
    assert names == ["every class", "0: ant", f"1: {_HOSTILE}", "2: cat"]  # as text
    assert browser.execute_script("return document.querySelectorAll('#label img').length") == 0
    assert browser.title == "dcgan-jax"  # the name's HTML never ran
    picker.find_elements("tag name", "option")[3].click()  # class 2
    picked = wait_for(lambda: (u := browser.execute_script(GRID_SHOWN)) != first and u,
                      "class 2")
    assert "label=2" in picked
    wait_for(lambda: "label=2" in (browser.execute_script(
        "return document.getElementById('strip').dataset.url") or ""), "the strip of class 2")
    assert browser.find_element("id", "error").text == ""


def test_a_conditional_run_on_some_of_the_digits(tmp_path):
  config = tiny_config(2)
  config.conditional, config.classes, config.evaluator = True, "7,3", "classifier"
  config.eval_every_steps, config.eval_num_samples = 2, 40
  workdir = tmp_path / "run"
  state = train.train_and_evaluate(config, str(workdir))
  assert json.loads((workdir / "classes.json").read_text()) == ["3", "7"]
  assert state.d_params["class_projection"].shape[0] == 2
  row = metrics.read_metrics(str(workdir / "metrics.csv"))[-1]
  # 40 images, 20 of each (label 0 judged as a 3, label 1 as a 7: evaluation_test pins it)
  assert abs(float(row["class_accuracy"]) * 40 - round(float(row["class_accuracy"]) * 40)) < 1e-9
  assert float(row["classifier_intra_fid"]) > 0
