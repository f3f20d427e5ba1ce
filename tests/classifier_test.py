"""The digit classifier: data split, augmentation, trained accuracy, cached weights."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcgan_jax import classifier, fid, image_cache, steps
from dcgan_jax.errors import UsageError

pytestmark = pytest.mark.slow  # trains the digit classifier


@pytest.fixture(scope="module")
def split():
  return classifier.embedded_split()


@pytest.fixture(scope="module")
def trained():
  # The session's cache folder (conftest), so that other tests reuse this training.
  cache = pathlib.Path(image_cache.default_cache_dir())
  return cache, classifier.load_or_train(cache, seed=0)


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


def test_trained_accuracy_and_class_predictions(trained, split):
  _, (model, params, accuracy) = trained
  assert accuracy >= 0.97
  predicted, features = classifier.predict(model, params,
                                           steps.to_float(split.held_out_images))
  assert features.shape == (1000, 64)
  assert float(np.mean(predicted == split.held_out_labels)) == pytest.approx(accuracy)
  assert np.all(np.bincount(predicted, minlength=10) >= 90)


def test_weights_are_cached_and_reloaded(trained):
  cache, (_, params, accuracy) = trained
  assert len(list(cache.glob("digit_classifier_v*_seed0.msgpack"))) == 1
  _, reloaded, reloaded_accuracy = classifier.load_or_train(cache, seed=0)
  assert reloaded_accuracy == accuracy
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reloaded)):
    np.testing.assert_array_equal(a, b)


def test_classifier_fid_separates_digits_from_noise(trained, split):
  _, (model, params, _) = trained
  _, train_features = classifier.predict(model, params, steps.to_float(split.train_images))
  _, held_features = classifier.predict(model, params,
                                        steps.to_float(split.held_out_images))
  noise = np.random.default_rng(0).uniform(-1, 1, (1000, 32, 32, 1)).astype(np.float32)
  _, noise_features = classifier.predict(model, params, noise)
  reference = fid.feature_stats(train_features)
  floor = fid.frechet_distance(reference, fid.feature_stats(held_features))
  noise_fid = fid.frechet_distance(reference, fid.feature_stats(noise_features))
  assert 0 < floor < noise_fid / 10


def test_unreadable_cached_weights_are_a_one_line_error(trained, tmp_path):
  cache, _ = trained
  for name in ("digit_classifier_v1_seed0.msgpack", "digit_classifier_v1_seed0.json"):
    (tmp_path / name).write_bytes((cache / name).read_bytes())
  (tmp_path / "digit_classifier_v1_seed0.msgpack").write_bytes(b"\x00garbage")
  with pytest.raises(UsageError) as e:
    classifier.load_or_train(tmp_path, seed=0)
  assert "digit_classifier_v1_seed0.msgpack" in str(e.value) and "\n" not in str(e.value)
  assert "delete it" in str(e.value)


def test_held_out_mask_takes_the_last_of_each_class():
  labels = np.array([0, 1, 0, 1, 0] + [c for c in range(2, 10) for _ in range(101)])
  mask = classifier.held_out_mask(labels)
  assert mask.sum() == 2 + 3 + 8 * 100  # classes 0 and 1 have fewer than 100: all held out
  assert not mask[5] and mask[6] and mask[105]  # first digit of class 2 kept, the rest held out


def test_first_use_says_that_it_trains_and_how_long(tmp_path, monkeypatch, caplog):
  model = classifier.DigitClassifier()
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)))["params"]
  monkeypatch.setattr(classifier, "train", lambda split, seed: (model, params, 0.5))
  with caplog.at_level("INFO"):
    classifier.load_or_train(tmp_path, seed=0)
  said = " ".join(r.getMessage() for r in caplog.records)
  assert "training the digit classifier" in said and "about a minute" in said
  assert "digit classifier trained in" in said
  caplog.clear()
  with caplog.at_level("INFO"):
    _, reloaded, accuracy = classifier.load_or_train(tmp_path, seed=0)  # cached: says nothing
  assert accuracy == 0.5 and "training" not in " ".join(r.getMessage() for r in caplog.records)
