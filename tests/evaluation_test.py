"""Evaluators: metrics of image sets, generation in fixed batches, the real reference, the
feature cache, and evaluation during a run (metrics.csv, the best checkpoint, quality.png)."""

import os

import jax
import numpy as np
import pytest
from PIL import Image

from dcgan_jax.configs import default
from dcgan_jax import checkpoint, classifier, evaluation, input_pipeline, metrics, steps, train
from conftest import random_inception_state_dict, tiny_config

pytestmark = pytest.mark.slow  # trains and evaluates runs


def _mean_pixel_extractor(calls: list | None = None) -> evaluation.Extractor:
  """Features: the mean of each image quarter (4); classes: the brightest quarter."""
  def extract(x):
    if calls is not None:
      calls.append(len(x))
    h, w = x.shape[1] // 2, x.shape[2] // 2
    quarters = np.stack([x[:, :h, :w].mean((1, 2, 3)), x[:, :h, w:].mean((1, 2, 3)),
                         x[:, h:, :w].mean((1, 2, 3)), x[:, h:, w:].mean((1, 2, 3))], 1)
    return quarters.astype(np.float64), np.argmax(quarters, 1)
  return evaluation.Extractor("classifier", "classifier_", "quarters-v1", extract)


def _images(seed: int, n: int = 400) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)


def test_metrics_of_images(tmp_path):
  evaluator = evaluation.Evaluator(_mean_pixel_extractor(), _images(0), str(tmp_path),
                                   kid_subset_size=100, kid_subsets=10)
  assert evaluator.metric_names() == ["classifier_fid", "classifier_kid", "classifier_kid_std",
                                      "classes_present", "min_class_fraction"]
  same = evaluator.of_images(_images(0))
  assert abs(same["classifier_fid"]) < 1e-9
  other = evaluator.of_images(_images(1))
  shifted = evaluator.of_images(np.clip(_images(1).astype(int) + 60, 0, 255).astype(np.uint8))
  assert 0 < other["classifier_fid"] < shifted["classifier_fid"]
  assert other["classifier_kid"] < shifted["classifier_kid"]
  # Four classes at most (the quarters): a histogram of four nonzero bins out of ten.
  assert other["classes_present"] == 4 and other["min_class_fraction"] == 0.0
  # The FID is the Fréchet distance of the features' Gaussians, computed by hand here.
  real, _ = _mean_pixel_extractor().extract(evaluation.steps_to_float(_images(0)))
  fake, _ = _mean_pixel_extractor().extract(evaluation.steps_to_float(_images(1)))
  import scipy.linalg  # pylint: disable=g-import-not-at-top
  s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
  expected = (np.sum((real.mean(0) - fake.mean(0)) ** 2) + np.trace(s1 + s2)
              - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real))
  assert other["classifier_fid"] == pytest.approx(expected, rel=1e-6)


def test_real_features_are_cached_by_extractor_and_images(tmp_path):
  calls = []
  evaluation.Evaluator(_mean_pixel_extractor(calls), _images(0), str(tmp_path))
  evaluation.Evaluator(_mean_pixel_extractor(calls), _images(0), str(tmp_path))
  assert calls == [400]  # the second evaluator read the cache
  evaluation.Evaluator(_mean_pixel_extractor(calls), _images(2), str(tmp_path))
  assert calls == [400, 400]  # other images: computed again
  cached = [p for p in os.listdir(tmp_path) if p.startswith("features-classifier-")]
  assert len(cached) == 2
  for name in cached:  # a damaged cache file is rebuilt, not trusted
    (tmp_path / name).write_bytes(b"damaged")
  evaluation.Evaluator(_mean_pixel_extractor(calls), _images(0), str(tmp_path))
  assert calls == [400, 400, 400]


def test_reference_images():
  config = default.get_config()
  data = np.arange(5000, dtype=np.int32).reshape(5000, 1, 1, 1)  # each image its index
  reference, held_out = evaluation.reference_images(config, data)
  assert len(reference) == 4000 and len(held_out) == 1000  # the classifier's split
  _, labels = input_pipeline.embedded_digits()
  np.testing.assert_array_equal(held_out.ravel(),
                                np.flatnonzero(classifier.held_out_mask(labels)))
  config.dataset, config.eval_num_samples = "imagefolder", 300
  data = np.arange(1000 * 4, dtype=np.int32).reshape(1000, 2, 2, 1)
  reference, held_out = evaluation.reference_images(config, data)
  assert held_out is None and len(reference) == 300
  assert len({int(r[0, 0, 0]) for r in reference}) == 300  # distinct images
  again, _ = evaluation.reference_images(config, data)
  np.testing.assert_array_equal(reference, again)  # fixed by the seed
  config.seed = 1
  assert not np.array_equal(evaluation.reference_images(config, data)[0], reference)


def test_evaluation_during_training_needs_an_evaluator_and_an_interval():
  config = default.get_config()
  assert evaluation.enabled(config)  # the embedded default evaluates
  config.eval_every_steps = 0
  assert not evaluation.enabled(config)
  config.eval_every_steps, config.evaluator = 1000, ""
  assert not evaluation.enabled(config)


def test_best_metric_name():
  config = default.get_config()
  config.g_ema_decay = 0.0
  assert evaluation.best_metric_name(config) == "classifier_fid"
  config.g_ema_decay = 0.999
  assert evaluation.best_metric_name(config) == "ema_classifier_fid"
  config.evaluator, config.inception_weights = "inception", "w.pth"
  assert evaluation.best_metric_name(config) == "ema_fid"
  config.best_metric = "kid"
  assert evaluation.best_metric_name(config) == "kid"


def eval_config(steps_: int):
  config = tiny_config(steps_)
  config.evaluator = "classifier"
  config.eval_every_steps = 2
  config.eval_num_samples = 64
  config.g_ema_decay = 0.9
  return config


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("eval_run"))
  return workdir, train.train_and_evaluate(eval_config(6), workdir)


def test_run_evaluates_and_keeps_the_best_checkpoint(evaluated_run):
  workdir, state = evaluated_run
  rows = metrics.read_metrics(os.path.join(workdir, "metrics.csv"))
  assert [r["step"] for r in rows] == ["2", "4", "6"]
  for name in ("classifier_fid", "classifier_kid", "ema_classifier_fid", "classes_present",
               "ema_min_class_fraction"):
    assert all(r[name] != "" for r in rows), name
  values = {int(r["step"]): float(r["ema_classifier_fid"]) for r in rows}
  best_step = min(values, key=values.get)
  best_dir = os.path.join(workdir, "best")
  assert [p for p in os.listdir(best_dir) if p.isdigit()] == [str(best_step)]
  assert Image.open(os.path.join(workdir, "quality.png")).format == "PNG"
  ckpt = checkpoint.BestCheckpointer(best_dir, "ema_classifier_fid", create=False)
  assert ckpt.best_value() == pytest.approx(values[best_step], rel=1e-5)
  ckpt.close()
  # The row's metrics are those of the state at that step: recompute the last one.
  config = eval_config(6)
  evaluator, _ = evaluation.from_config(config, _embedded_data(config))
  gan = steps.gan_from_config(config)
  again = evaluation.evaluate_state(evaluator, gan, state, config,
                                    evaluation.eval_noise(config))
  assert again["ema_classifier_fid"] == pytest.approx(float(rows[-1]["ema_classifier_fid"]),
                                                      rel=1e-5)


def _embedded_data(config):
  return input_pipeline.load_images(config)


def test_resumed_evaluated_run_equals_an_uninterrupted_one(evaluated_run, tmp_path):
  workdir, state = evaluated_run
  first = str(tmp_path / "resumed")
  train.train_and_evaluate(eval_config(4), first)
  resumed = train.train_and_evaluate(eval_config(6), first)
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(state), strict=True):
    np.testing.assert_array_equal(a, b)
  read = lambda w: [(r["step"], r["ema_classifier_fid"])  # noqa: E731
                    for r in metrics.read_metrics(os.path.join(w, "metrics.csv"))]
  assert read(first) == read(workdir)
  assert os.listdir(os.path.join(first, "best")) == os.listdir(os.path.join(workdir, "best"))


@pytest.mark.xla_default  # its time is the Inception's work, which -O0 code does slower
def test_run_with_the_inception_evaluator(tmp_path, monkeypatch):
  torch = pytest.importorskip("torch")
  from dcgan_jax import inception  # pylint: disable=g-import-not-at-top
  weights = tmp_path / "weights.pth"
  torch.save({k: torch.from_numpy(v) for k, v in random_inception_state_dict().items()}, weights)
  monkeypatch.setattr(inception, "WEIGHTS_SHA256", inception.file_sha256(str(weights)))
  config = tiny_config(2)
  config.evaluator, config.inception_weights = "inception", str(weights)
  config.eval_every_steps, config.eval_num_samples = 2, 10
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))
  row = metrics.read_metrics(str(workdir / "metrics.csv"))[-1]
  assert float(row["fid"]) > 0 and row["kid"] != "" and "classes_present" not in row
  assert [p for p in os.listdir(workdir / "best") if p.isdigit()] == ["2"]


def test_class_accuracy_is_the_fraction_classified_as_their_own_class(tmp_path):
  """The brightest quarter is the class: images lit in quarter q are of class q."""
  digits = evaluation.DIGIT_CLASSES
  judge = evaluation.Evaluator(_mean_pixel_extractor(), _images(0), str(tmp_path),
                               kid_subset_size=100, kid_subsets=10, class_names=digits)
  assert judge.metric_names()[-1] == "class_accuracy"
  lit = np.zeros((8, 8, 8, 1), np.uint8)
  for i, (y, x) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)] * 2):
    lit[i, y:y + 4, x:x + 4] = 255  # image i lit in quarter i % 4
  labels = np.array([0, 1, 2, 3, 0, 1, 3, 2])  # the last two asked for the other class
  got = judge.of_images(lit, labels, per_class=True)
  assert got["class_accuracy"] == 6 / 8
  assert (got["class_accuracy_0"], got["class_accuracy_1"]) == (1.0, 1.0)
  assert (got["class_accuracy_2"], got["class_accuracy_3"]) == (0.5, 0.5)
  assert "class_accuracy_4" not in got  # no image of it
  assert "class_accuracy" not in judge.of_images(lit)  # without the classes asked for
  for names in ((), ("a", "b"), ("3",), ("2", "x")):  # not two or more digits: not judged
    other = evaluation.Evaluator(_mean_pixel_extractor(), _images(0), str(tmp_path),
                                 kid_subset_size=100, kid_subsets=10, class_names=names)
    assert "class_accuracy" not in other.metric_names()
    assert "class_accuracy" not in other.of_images(lit, labels)
  # some of the digits (config.classes): label i is class_names[i]'s digit
  some = evaluation.Evaluator(_mean_pixel_extractor(), _images(0), str(tmp_path),
                              kid_subset_size=100, kid_subsets=10, class_names=("2", "3"))
  got = some.of_images(lit[[2, 3, 6, 7]], np.array([0, 1, 1, 0]), per_class=True)
  assert got["class_accuracy"] == 0.5  # lit in quarters 2, 3, 2, 3: the last two asked for 3, 2
  assert (got["class_accuracy_2"], got["class_accuracy_3"]) == (0.5, 0.5)


def test_intra_fid_is_the_mean_fid_within_each_class(tmp_path):
  """Class 1's real images are class 0's brightened by 16 levels: the same covariance, their
  features' means 16/127.5 apart in each of the 4 quarters. Generated images of the wrong class
  have FID 0 overall (the same set) and 4 (16/127.5)^2 within each class."""
  a = np.random.default_rng(0).integers(0, 200, (60, 8, 8, 1), dtype=np.uint8)
  real, real_labels = np.concatenate([a, a + 16]), np.repeat([0, 1], 60)
  judge = evaluation.Evaluator(_mean_pixel_extractor(), real, str(tmp_path), kid_subset_size=50,
                               kid_subsets=2, class_names=evaluation.DIGIT_CLASSES,
                               real_labels=real_labels)
  assert judge.metric_names()[-2:] == ["class_accuracy", "classifier_intra_fid"]
  right = judge.of_images(real, real_labels, per_class=True)
  assert right["classifier_intra_fid"] == pytest.approx(0.0, abs=1e-9)
  swapped = judge.of_images(real, 1 - real_labels, per_class=True)
  assert swapped["classifier_fid"] == pytest.approx(0.0, abs=1e-9)
  for key in ("classifier_intra_fid", "classifier_intra_fid_0", "classifier_intra_fid_1"):
    # the images become float32 before the features: float32 rounding
    assert swapped[key] == pytest.approx(4 * (16 / 127.5) ** 2, rel=1e-6), key
  assert "classifier_intra_fid_2" not in swapped  # no real or generated image of it
  # a class with one generated image has no covariance: it is left out of the mean
  one = judge.of_images(real[:61], real_labels[:61], per_class=True)
  assert "classifier_intra_fid_1" not in one
  assert one["classifier_intra_fid"] == pytest.approx(0.0, abs=1e-9)
  without = evaluation.Evaluator(_mean_pixel_extractor(), real, str(tmp_path), kid_subset_size=50,
                                 kid_subsets=2, class_names=evaluation.DIGIT_CLASSES)
  assert "classifier_intra_fid" not in without.metric_names()  # no real classes
  assert "classifier_intra_fid" not in without.of_images(real, real_labels)
  with pytest.raises(ValueError, match="real_labels"):
    evaluation.Evaluator(_mean_pixel_extractor(), real, str(tmp_path),
                         class_names=evaluation.DIGIT_CLASSES, real_labels=real_labels[:5])


@pytest.mark.parametrize("which", ["reference", "held_out"])
def test_the_labels_are_those_of_the_reference_and_held_out_images(which):
  config = default.get_config()
  config.eval_num_samples = 300
  data = input_pipeline.load_images(config)
  images = dict(zip(("reference", "held_out"), evaluation.reference_images(config, data)))[which]
  labels = {"reference": evaluation.reference_labels,
            "held_out": evaluation.held_out_labels}[which](config, len(data))
  assert len(labels) == len(images) == 300
  digits, all_labels = input_pipeline.embedded_digits()
  # each image found among the preprocessed digits: its label is the one given
  source = input_pipeline.embedded_source(32, 1)
  index = {source.load(d).tobytes(): i for i, d in enumerate(digits)}
  np.testing.assert_array_equal(labels, [all_labels[index[x.tobytes()]] for x in images])
  assert len(set(labels.tolist())) == 10
