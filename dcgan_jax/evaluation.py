"""Evaluators of image quality: FID and KID of generated images against real ones on a
feature extractor (the project's digit classifier, or the FID Inception), and the class
histogram where the extractor classifies.

Generated images are quantised to uint8 before they are measured, as images saved to disk
and read back would be, so that they are measured exactly like the real ones.
"""

import dataclasses
import functools
import hashlib
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dcgan_jax import checkpoint, errors, fid, image_cache, parallel, sampling, steps
from dcgan_jax import workdir as workdir_lib
from dcgan_jax.errors import UsageError

EVALUATORS = ("classifier", "inception")
DIGIT_CLASSES = tuple(str(d) for d in range(10))  # a run whose classes the digit classifier judges

# (float images in [-1, 1]) -> (features (N, D), predicted classes (N,) or None)
ExtractFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


@dataclasses.dataclass(frozen=True)
class Extractor:
  name: str  # 'classifier' or 'inception'
  prefix: str  # of its metrics' names: 'classifier_fid' or 'fid'
  identity: str  # everything its features depend on (part of the real-feature cache key)
  extract: ExtractFn


def classifier_extractor(cache_dir: str, seed: int = 0) -> Extractor:
  """Returns the digit classifier's 64 penultimate features and its predictions; images of any size
  are resized to its 32x32 (bilinear, antialiased)."""
  from dcgan_jax import classifier  # pylint: disable=g-import-not-at-top

  model, params, accuracy = classifier.load_or_train(cache_dir, seed)
  logging.info("digit classifier: held-out accuracy %.4f", accuracy)

  def extract(x_NxSxSx1: np.ndarray):
    if x_NxSxSx1.shape[-1] != 1:
      raise ValueError(f"the digit classifier takes 1-channel images, got {x_NxSxSx1.shape}")
    size = classifier.IMAGE_SIZE
    if x_NxSxSx1.shape[1:3] != (size, size):
      x_NxSxSx1 = np.asarray(_resize(jnp.asarray(x_NxSxSx1), size))
    classes, features = classifier.predict(model, params, x_NxSxSx1)
    return features, classes

  return Extractor("classifier", "classifier_",
                   f"classifier-v{classifier.VERSION}-{classifier.identity(params)}", extract)


@functools.partial(jax.jit, static_argnums=1)
def _resize(x: jax.Array, size: int) -> jax.Array:
  return jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "linear", antialias=True)


def inception_extractor(weights_path: str) -> Extractor:
  """Returns the FID Inception's 2048 pool features (inception.py), from the weights file."""
  from dcgan_jax import inception  # pylint: disable=g-import-not-at-top

  variables = inception.load_weights(weights_path)
  return Extractor("inception", "", f"inception-{inception.WEIGHTS_SHA256[:16]}",
                   lambda x: (inception.features(variables, x), None))


def extractor_from_config(config: ml_collections.ConfigDict) -> Extractor:
  cache_dir = config.cache_dir or image_cache.default_cache_dir()
  if config.evaluator == "classifier":
    return classifier_extractor(cache_dir)
  if config.evaluator == "inception":
    return inception_extractor(config.inception_weights)
  raise UsageError(f"config.evaluator={config.evaluator!r} is not one of {EVALUATORS}")


def _cached_features(extractor: Extractor, images_u8: np.ndarray, cache_dir: str) -> np.ndarray:
  """Returns the extractor's features of real images, cached by the extractor and the images'
  bytes."""
  digest = hashlib.sha256(extractor.identity.encode())
  digest.update(str(images_u8.shape).encode())
  digest.update(np.ascontiguousarray(images_u8).data)
  path = os.path.join(cache_dir, f"features-{extractor.name}-{digest.hexdigest()[:20]}.npy")
  if os.path.exists(path):
    try:
      cached = np.load(path)
      if cached.ndim == 2 and len(cached) == len(images_u8):
        return cached
    except (OSError, ValueError):
      pass
    logging.warning("rebuilding the unreadable feature cache %s", path)
  features, _ = extractor.extract(steps_to_float(images_u8))
  os.makedirs(cache_dir, exist_ok=True)
  tmp = f"{path}.tmp.npy"
  with errors.writing(path, undo=lambda: os.remove(tmp)):
    np.save(tmp, features)
    os.replace(tmp, path)
  return features


def steps_to_float(images_u8: np.ndarray) -> np.ndarray:
  return np.asarray(steps.to_float(jnp.asarray(images_u8)))


class Evaluator:
  """FID/KID of sets of images against a fixed set of real images."""

  def __init__(self, extractor: Extractor, real_u8: np.ndarray, cache_dir: str,
               kid_subset_size: int = 1000, kid_subsets: int = 100,
               class_names: tuple[str, ...] = (), real_labels: np.ndarray | None = None):
    """class_names: a conditional run's classes (the classifier judges digits: all ten or some
    of them); real_labels: the labels (indices of class_names) of real_u8, for the FID within
    each class (intra-FID)."""
    self.extractor = extractor
    self.class_names = tuple(class_names)
    # class_accuracy: the classifier judges a conditional run on digits
    self.judges_classes = (extractor.name == "classifier" and len(class_names) >= 2
                           and set(class_names) <= set(DIGIT_CLASSES))
    # label i's digit: what the classifier must answer for an image of class i
    self.digit_of_label = (np.array([int(n) for n in class_names])
                           if self.judges_classes else None)
    self.real_features = _cached_features(extractor, real_u8, cache_dir)
    self.real_stats = fid.feature_stats(self.real_features)
    self.real_class_stats = {}  # label -> FeatureStats of its real images
    if self.judges_classes and real_labels is not None:
      real_labels = np.asarray(real_labels)
      if real_labels.shape != (len(real_u8),):
        raise ValueError(f"real_labels: {real_labels.shape} for {len(real_u8)} images")
      self.real_class_stats = {c: fid.feature_stats(self.real_features[real_labels == c])
                               for c in range(len(class_names))
                               if np.sum(real_labels == c) >= 2}
    self.num_real = len(real_u8)
    self.kid_subset_size, self.kid_subsets = kid_subset_size, kid_subsets

  def metric_names(self) -> list[str]:
    p = self.extractor.prefix
    names = [f"{p}fid", f"{p}kid", f"{p}kid_std"]
    if self.extractor.name == "classifier":
      names += ["classes_present", "min_class_fraction"]
    if self.judges_classes:
      names.append("class_accuracy")
    if self.real_class_stats:
      names.append(f"{p}intra_fid")
    return names

  def of_images(self, images_u8: np.ndarray, labels_N: np.ndarray | None = None,
                per_class: bool = False) -> dict[str, float]:
    """Returns the metrics of uint8 images (N, S, S, C); with the classes they were generated
    for (or, for real images, are of), class_accuracy: the fraction the classifier assigns to
    their own class, and {prefix}intra_fid: the mean over the classes generated of the FID of
    each class's images against the real images of that class (with per_class, each class's
    figures too: class_accuracy_<class>, {prefix}intra_fid_<class>)."""
    features, classes = self.extractor.extract(steps_to_float(images_u8))
    p = self.extractor.prefix
    kid, kid_std = fid.kernel_inception_distance(features, self.real_features, self.kid_subsets,
                                                 self.kid_subset_size)
    out = {f"{p}fid": fid.frechet_distance(fid.feature_stats(features), self.real_stats),
           f"{p}kid": kid, f"{p}kid_std": kid_std}
    if classes is not None:
      histogram = np.bincount(classes, minlength=10) / len(classes)
      out.update(classes_present=int(np.sum(histogram > 0)),
                 min_class_fraction=float(histogram.min()))
      if self.judges_classes and labels_N is not None:
        labels_N = np.asarray(labels_N)
        hits = np.asarray(classes) == self.digit_of_label[labels_N]
        out["class_accuracy"] = float(hits.mean())
        if per_class:
          out.update({f"class_accuracy_{name}": float(hits[labels_N == c].mean())
                      for c, name in enumerate(self.class_names) if np.any(labels_N == c)})
        out.update(self._intra_fid(features, labels_N, per_class))
    return out

  def _intra_fid(self, features_NxF: np.ndarray, labels_N: np.ndarray,
                 per_class: bool) -> dict[str, float]:
    p = self.extractor.prefix
    within = {c: fid.frechet_distance(fid.feature_stats(features_NxF[labels_N == c]), real)
              for c, real in self.real_class_stats.items() if np.sum(labels_N == c) >= 2}
    if not within:
      return {}
    out = {f"{p}intra_fid": float(np.mean(list(within.values())))}
    if per_class:
      out.update({f"{p}intra_fid_{self.class_names[c]}": v for c, v in within.items()})
    return out


def _embedded_digits_of_run(config: ml_collections.ConfigDict, num_images: int
                            ) -> tuple[np.ndarray, np.ndarray] | None:
  """The run's embedded digits as load_dataset gives them (config.classes' only, in order):
  their labels (indices of the run's classes) and the classifier's held-out mask; None where
  the data are not those digits."""
  if config.dataset != "embedded":
    return None
  from dcgan_jax import classifier, input_pipeline  # pylint: disable=g-import-not-at-top
  _, digits = input_pipeline.embedded_digits()
  held_out = classifier.held_out_mask(digits)
  labels = digits.astype(np.int32)
  if config.classes:
    keep, labels = input_pipeline.keep_classes(
        digits, input_pipeline.select_classes(config, DIGIT_CLASSES))
    held_out = held_out[keep]
  return (labels, held_out) if len(labels) == num_images else None


def reference_images(config: ml_collections.ConfigDict, data_u8: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray | None]:
  """Returns (real images the samples are measured against, held-out real images or None).

  The embedded digits: the digit classifier's 4,000 training digits, and its 1,000 held-out
  digits (the floor: real digits the reference does not contain), of config.classes where it
  names some. Other datasets: the training images, and no held-out set. Each set is at most
  eval_num_samples images, chosen by the seed.
  """
  run = _embedded_digits_of_run(config, len(data_u8))
  if run is not None:
    _, held_out = run
    return (_seeded_subset(data_u8[~held_out], config.eval_num_samples, config.seed),
            _seeded_subset(data_u8[held_out], config.eval_num_samples, config.seed))
  return np.asarray(_seeded_subset(data_u8, config.eval_num_samples, config.seed)), None


def _embedded_labels(config: ml_collections.ConfigDict, num_images: int,
                     held_out: bool) -> np.ndarray | None:
  run = _embedded_digits_of_run(config, num_images)
  if run is None:
    return None
  labels, mask = run
  return _seeded_subset(labels[mask if held_out else ~mask], config.eval_num_samples,
                        config.seed)


def held_out_labels(config: ml_collections.ConfigDict, num_images: int) -> np.ndarray | None:
  """The labels of reference_images' held-out images (the same seeded choice), None where it
  chooses none."""
  return _embedded_labels(config, num_images, held_out=True)


def reference_labels(config: ml_collections.ConfigDict, num_images: int) -> np.ndarray | None:
  """The labels of reference_images' reference images (the same seeded choice), None where
  they are not the embedded digits."""
  return _embedded_labels(config, num_images, held_out=False)


def _seeded_subset(images: np.ndarray, num: int, seed: int) -> np.ndarray:
  """Returns all images if there are at most num, else num of them chosen by the seed (in order)."""
  if len(images) <= num:
    return images
  order = np.random.default_rng([seed, sampling.EVAL_SALT]).permutation(len(images))
  return images[np.sort(order[:num])]


def from_config(config: ml_collections.ConfigDict, data_u8: np.ndarray,
                class_names: tuple[str, ...] = ()) -> tuple[Evaluator, np.ndarray | None]:
  """Returns the config's evaluator with its real reference, and the held-out real images if
  any; class_names: a conditional run's classes (the classifier judges the ten digits')."""
  reference, held_out = reference_images(config, data_u8)
  cache_dir = config.cache_dir or image_cache.default_cache_dir()
  real_labels = reference_labels(config, len(data_u8)) if class_names else None
  return Evaluator(extractor_from_config(config), reference, cache_dir,
                   class_names=class_names, real_labels=real_labels), held_out


def metric_names(evaluator: Evaluator, ema: bool) -> list[str]:
  names = evaluator.metric_names()
  return names + [f"ema_{n}" for n in names] if ema else names


def best_metric_name(config: ml_collections.ConfigDict) -> str:
  """Returns config.best_metric, with 'auto' resolved: the FID of the EMA generator where it is on,
  else of G."""
  if config.best_metric != "auto":
    return config.best_metric
  name = "classifier_fid" if config.evaluator == "classifier" else "fid"
  return f"ema_{name}" if config.g_ema_decay > 0 else name


def evaluate_state(evaluator: Evaluator, gan: steps.GAN, state: steps.TrainState,
                   config: ml_collections.ConfigDict, z_NxZ: jax.Array,
                   per_class: bool = False) -> dict[str, float]:
  """Returns the metrics of G (and of its EMA where the state has one), generated from z in batches
  of config.batch_size with config.sample_bn_mode (a conditional G's classes drawn evenly);
  per_class: class_accuracy of each class too."""
  labels = sampling.even_labels(len(z_NxZ), gan.num_classes) if gan.num_classes else None
  out = evaluator.of_images(sampling.generate_images(gan, state, z_NxZ, config.batch_size,
                                                     config.sample_bn_mode, labels_N=labels),
                            labels, per_class)
  if state.g_ema_params is not None:
    ema = evaluator.of_images(sampling.generate_images(gan, state, z_NxZ, config.batch_size,
                                                       config.sample_bn_mode, ema=True,
                                                       labels_N=labels), labels, per_class)
    out.update({f"ema_{k}": v for k, v in ema.items()})
  return out


def enabled(config: ml_collections.ConfigDict) -> bool:
  """Tells whether a run evaluates while it trains (an evaluator and an interval)."""
  return bool(config.evaluator) and config.eval_every_steps > 0


def eval_noise(config: ml_collections.ConfigDict) -> jax.Array:
  """Returns the latents (N, Z) of every evaluation of a run: fixed by its seed."""
  return sampling.fixed_noise(config.seed, config.eval_num_samples, config.nz,
                              sampling.EVAL_SALT)


class DuringTraining:
  """Evaluation during a run: the metrics of G (and its EMA) on the run's evaluation noise,
  the floor (the best metric of held-out real images, where the dataset has them), and the
  best checkpoint by config.best_metric, kept in workdir/best.

  Process 0 evaluates (the other processes build no evaluator) and sends the best metric's
  value to every process; all take part in saving the best checkpoint.
  """

  def __init__(self, config: ml_collections.ConfigDict, data_u8: np.ndarray, gan: steps.GAN,
               workdir: str, class_names: tuple[str, ...] = ()):
    self.config, self.gan = config, gan
    self.best_dir = workdir_lib.checkpoint_dir(workdir, "best")
    self.metric = best_metric_name(config)
    self.evaluator, self.floor = None, None
    if parallel.is_primary():
      self.evaluator, held_out = from_config(config, data_u8, class_names)
      if held_out is not None:
        floor = self.evaluator.of_images(held_out, held_out_labels(config, len(data_u8)))
        logging.info("held-out real images (%d) against the reference (%d): %s",
                     len(held_out), self.evaluator.num_real,
                     " ".join(f"{k} {v:.4g}" for k, v in floor.items()))
        self.floor = floor[self.metric.removeprefix("ema_")]
    self.columns = (metric_names(self.evaluator, config.g_ema_decay > 0)
                    if self.evaluator is not None else [])
    self.z = eval_noise(config)
    self._best: checkpoint.BestCheckpointer | None = None

  def run(self, state: steps.TrainState) -> dict[str, float]:
    """Evaluates state, offers it as the best checkpoint and returns its metrics."""
    t0 = time.perf_counter()
    values = {}
    if self.evaluator is not None:
      values = evaluate_state(self.evaluator, self.gan, parallel.local_copy(state), self.config,
                              self.z)
    if self._best is None:
      self._best = checkpoint.BestCheckpointer(self.best_dir, self.metric)
    kept = self._best.offer(state, parallel.broadcast_float(values.get(self.metric, 0.0)))
    logging.info("step %d eval (%.1f s): %s%s", int(state.step), time.perf_counter() - t0,
                 " ".join(f"{k} {v:.4g}" for k, v in values.items()),
                 f"; best {self.metric} so far, kept in {self._best.directory}" if kept else "")
    return values

  def close(self) -> None:
    """Waits for the best checkpoint still being written."""
    if self._best is not None:
      self._best.close()
