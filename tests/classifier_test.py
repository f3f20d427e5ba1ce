"""The digit classifier: data split, augmentation, the shipped weights and their accuracy, the
command that makes them, weights of other seeds trained and cached."""

import json
import logging
import pathlib
import shutil
import subprocess
import sys

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcgan_jax import classifier, evaluation, fid, steps
from dcgan_jax.errors import UsageError

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def split():
  return classifier.embedded_split()


def _no_training(*args, **kwargs):
  raise AssertionError("the classifier was trained")


@pytest.fixture
def shipped(tmp_path, monkeypatch):
  """The classifier a run loads (seed 0), with training made to fail: it must come from the
  package's file, at once."""
  monkeypatch.setattr(classifier, "train", _no_training)
  return classifier.load_or_train(tmp_path / "cache", seed=0)


def _stub_train(accuracy: float = 0.5):
  model = classifier.DigitClassifier()
  params = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 1)))["params"]
  return lambda split, seed: (model, params, accuracy)


def test_split_holds_out_100_per_class(split):
  assert split.train_images.shape == (4000, 32, 32, 1)
  assert split.held_out_images.shape == (1000, 32, 32, 1)
  assert split.train_images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(split.held_out_labels, minlength=10), [100] * 10)
  np.testing.assert_array_equal(np.bincount(split.train_labels, minlength=10), [400] * 10)


def test_shift_translates_by_whole_pixels():
  image = jnp.arange(36, dtype=jnp.float32).reshape(1, 6, 6, 1)
  shifted = classifier._shift(jax.random.PRNGKey(3), jnp.repeat(image, 8, 0), 2)
  padded = np.pad(np.asarray(image[0]), ((2, 2), (2, 2), (0, 0)), constant_values=-1.0)
  crops = [padded[r:r + 6, c:c + 6] for r in range(5) for c in range(5)]
  for s in np.asarray(shifted):
    assert any(np.array_equal(s, c) for c in crops)
  assert len({np.asarray(s).tobytes() for s in shifted}) > 1  # not all the same shift


def test_shipped_classifier_loads_at_once_and_is_accurate(shipped, split, tmp_path):
  model, params, accuracy = shipped
  meta = json.loads((classifier.SHIPPED_DIR / "digit_classifier_v1_seed0.json").read_text())
  assert accuracy == meta["held_out_accuracy"] >= 0.97 and meta["seed"] == 0
  predicted, features = classifier.predict(model, params,
                                           steps.to_float(split.held_out_images))
  assert features.shape == (1000, 64)
  assert float(np.mean(predicted == split.held_out_labels)) == pytest.approx(accuracy)
  assert np.all(np.bincount(predicted, minlength=10) >= 90)
  assert not (tmp_path / "cache").exists()  # nothing trained, nothing cached


def test_evaluation_features_come_from_the_shipped_classifier(shipped, split, tmp_path,
                                                               monkeypatch):
  model, params, _ = shipped
  extractor = evaluation.classifier_extractor(str(tmp_path / "cache"))
  images = steps.to_float(split.held_out_images[:50])
  features, classes = extractor.extract(np.asarray(images))
  want_classes, want_features = classifier.predict(model, params, images)
  np.testing.assert_array_equal(features, want_features)
  np.testing.assert_array_equal(classes, want_classes)
  assert extractor.identity == f"classifier-v1-{classifier.identity(params)}"


def test_classifier_fid_separates_digits_from_noise(shipped, split):
  model, params, _ = shipped
  _, train_features = classifier.predict(model, params, steps.to_float(split.train_images))
  _, held_features = classifier.predict(model, params,
                                        steps.to_float(split.held_out_images))
  noise = np.random.default_rng(0).uniform(-1, 1, (1000, 32, 32, 1)).astype(np.float32)
  _, noise_features = classifier.predict(model, params, noise)
  reference = fid.feature_stats(train_features)
  floor = fid.frechet_distance(reference, fid.feature_stats(held_features))
  noise_fid = fid.frechet_distance(reference, fid.feature_stats(noise_features))
  assert 0 < floor < noise_fid / 10


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other_bytes", "no_json",
                                    "bad_json"])
def test_a_damaged_shipped_file_trains_one_saying_so(damage, tmp_path, monkeypatch, caplog):
  shipped_dir = tmp_path / "shipped"
  shutil.copytree(classifier.SHIPPED_DIR, shipped_dir)
  weights, meta = classifier._paths(shipped_dir, 0)  # pylint: disable=protected-access
  data = weights.read_bytes()
  if damage == "garbage":
    weights.write_bytes(b"\x00garbage")
  elif damage == "truncated":
    weights.write_bytes(data[:len(data) // 2])
  elif damage == "other_bytes":  # valid msgpack of the right shapes, other weights
    other = classifier.DigitClassifier().init(jax.random.PRNGKey(5),
                                              jnp.zeros((1, 32, 32, 1)))["params"]
    weights.write_bytes(flax.serialization.to_bytes(other))
  elif damage == "no_json":
    meta.unlink()
  else:
    meta.write_text("{")
  monkeypatch.setattr(classifier, "SHIPPED_DIR", shipped_dir)
  monkeypatch.setattr(classifier, "train", _stub_train(0.5))
  with caplog.at_level(logging.INFO):
    _, _, accuracy = classifier.load_or_train(tmp_path / "cache", seed=0)
  assert accuracy == 0.5  # trained (the stub) and cached
  said = " ".join(r.getMessage() for r in caplog.records)
  assert f"shipped with dcgan-jax, {weights}, cannot be used" in said
  assert "training one instead" in said and "training the digit classifier" in said
  assert classifier._paths(tmp_path / "cache", 0)[0].exists()  # pylint: disable=protected-access


def test_other_seeds_are_trained_cached_and_reloaded(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(classifier, "train", _stub_train(0.5))
  with caplog.at_level("INFO"):
    _, params, accuracy = classifier.load_or_train(tmp_path, seed=3)
  said = " ".join(r.getMessage() for r in caplog.records)
  assert "training the digit classifier" in said and "about a minute" in said
  assert "digit classifier trained in" in said
  meta = json.loads((tmp_path / "digit_classifier_v1_seed3.json").read_text())
  assert meta["seed"] == 3 and meta["held_out_accuracy"] == 0.5
  monkeypatch.setattr(classifier, "train", _no_training)
  caplog.clear()
  with caplog.at_level("INFO"):
    _, reloaded, accuracy = classifier.load_or_train(tmp_path, seed=3)  # cached: says nothing
  assert accuracy == 0.5 and "training" not in " ".join(r.getMessage() for r in caplog.records)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reloaded)):
    np.testing.assert_array_equal(a, b)


def test_unreadable_cached_weights_are_a_one_line_error(tmp_path, monkeypatch):
  monkeypatch.setattr(classifier, "train", _stub_train(0.5))
  classifier.load_or_train(tmp_path, seed=3)
  (tmp_path / "digit_classifier_v1_seed3.msgpack").write_bytes(b"\x00garbage")
  with pytest.raises(UsageError) as e:
    classifier.load_or_train(tmp_path, seed=3)
  assert "digit_classifier_v1_seed3.msgpack" in str(e.value) and "\n" not in str(e.value)
  assert "SHA-256" in str(e.value) and "delete it" in str(e.value)


@pytest.mark.xla_default
@pytest.mark.slow  # trains the classifier (about a minute on 2 cores)
def test_the_build_command_makes_an_equally_accurate_classifier(tmp_path):
  result = subprocess.run([sys.executable, "-m", "dcgan_jax.classifier", "build", "--out",
                           str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                          timeout=900)
  assert result.returncode == 0, result.stderr[-2000:]
  built = json.loads((tmp_path / "digit_classifier_v1_seed0.json").read_text())
  shipped = json.loads((classifier.SHIPPED_DIR / "digit_classifier_v1_seed0.json").read_text())
  # Deterministic on one kind of machine; another CPU's rounding may move a few digits.
  assert abs(built["held_out_accuracy"] - shipped["held_out_accuracy"]) <= 0.01
  assert built["held_out_accuracy"] >= 0.97 and "held-out accuracy" in result.stderr
  model = classifier.DigitClassifier()
  params, accuracy = classifier._read(tmp_path, 0, model)  # pylint: disable=protected-access
  assert accuracy == built["held_out_accuracy"]  # its SHA-256 and shapes check out


def test_held_out_mask_takes_the_last_of_each_class():
  labels = np.array([0, 1, 0, 1, 0] + [c for c in range(2, 10) for _ in range(101)])
  mask = classifier.held_out_mask(labels)
  assert mask.sum() == 2 + 3 + 8 * 100  # classes 0 and 1 have fewer than 100: all held out
  assert not mask[5] and mask[6] and mask[105]  # first digit of class 2 kept, the rest held out
