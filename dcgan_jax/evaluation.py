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
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dcgan_jax import fid, image_cache, sampling, steps
from dcgan_jax.errors import UsageError

EVALUATORS = ("classifier", "inception")
_EVAL_NOISE_SALT = 0xE7A1  # separates the evaluation noise from the training and sample noise

# (float images in [-1, 1]) -> (features (N, D), predicted classes (N,) or None)
ExtractFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


@dataclasses.dataclass(frozen=True)
class Extractor:
  name: str  # 'classifier' or 'inception'
  prefix: str  # of its metrics' names: 'classifier_fid' or 'fid'
  identity: str  # everything its features depend on (part of the real-feature cache key)
  extract: ExtractFn


def classifier_extractor(cache_dir: str, seed: int = 0) -> Extractor:
  """The digit classifier's 64 penultimate features and its predictions; images of any size
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
                   f"classifier-v{classifier.VERSION}-seed{seed}", extract)


@functools.partial(jax.jit, static_argnums=1)
def _resize(x: jax.Array, size: int) -> jax.Array:
  return jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "linear", antialias=True)


def inception_extractor(weights_path: str) -> Extractor:
  """The FID Inception's 2048 pool features (inception.py), from the weights file."""
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
  """The extractor's features of real images, cached by the extractor and the images' bytes."""
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
  np.save(tmp, features)
  os.replace(tmp, path)
  return features


def steps_to_float(images_u8: np.ndarray) -> np.ndarray:
  return np.asarray(steps.to_float(jnp.asarray(images_u8)))


class Evaluator:
  """FID/KID of sets of images against a fixed set of real images."""

  def __init__(self, extractor: Extractor, real_u8: np.ndarray, cache_dir: str,
               kid_subset_size: int = 1000, kid_subsets: int = 100):
    self.extractor = extractor
    self.real_features = _cached_features(extractor, real_u8, cache_dir)
    self.real_stats = fid.feature_stats(self.real_features)
    self.num_real = len(real_u8)
    self.kid_subset_size, self.kid_subsets = kid_subset_size, kid_subsets

  def metric_names(self) -> list[str]:
    p = self.extractor.prefix
    names = [f"{p}fid", f"{p}kid", f"{p}kid_std"]
    if self.extractor.name == "classifier":
      names += ["classes_present", "min_class_fraction"]
    return names

  def of_images(self, images_u8: np.ndarray) -> dict[str, float]:
    """The metrics of uint8 images (N, S, S, C)."""
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
    return out


def eval_noise(seed: int, num: int, nz: int) -> jax.Array:
  """The latent batch of every evaluation of a run: fixed by the seed."""
  return jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), _EVAL_NOISE_SALT),
                           (num, nz))


def generate_u8(gan: steps.GAN, state: steps.TrainState, z_NxZ: jax.Array, batch_size: int,
                bn_mode: str, ema: bool = False) -> np.ndarray:
  """uint8 images of G (or its EMA) for every row of z, in batches of batch_size (in 'train'
  BatchNorm mode a batch's statistics shape its images, so the batch size matters; the last
  batch is completed from the first rows and cut, so every batch has the same size)."""
  n = len(z_NxZ)
  padded = jnp.concatenate([z_NxZ, z_NxZ[:(-n) % batch_size]]) if n % batch_size else z_NxZ
  batches = padded.reshape(-1, batch_size, padded.shape[-1])
  return sampling.generate_batches_uint8(gan, state, batches, bn_mode, ema)[:n]


def reference_images(config: ml_collections.ConfigDict, data_u8: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray | None]:
  """(real images the samples are measured against, held-out real images or None).

  The embedded digits: the digit classifier's 4,000 training digits, and its 1,000 held-out
  digits (the floor: real digits the reference does not contain). Other datasets: the
  training images, and no held-out set. Each set is at most eval_num_samples images, chosen
  by the seed.
  """
  if config.dataset == "embedded":
    from dcgan_jax import classifier, input_pipeline  # pylint: disable=g-import-not-at-top
    _, labels = input_pipeline.embedded_digits()
    held_out = classifier.held_out_mask(labels)
    if len(labels) == len(data_u8):
      return (_seeded_subset(data_u8[~held_out], config.eval_num_samples, config.seed),
              _seeded_subset(data_u8[held_out], config.eval_num_samples, config.seed))
  return np.asarray(_seeded_subset(data_u8, config.eval_num_samples, config.seed)), None


def _seeded_subset(images: np.ndarray, num: int, seed: int) -> np.ndarray:
  """All images if there are at most num, else num of them chosen by the seed (in order)."""
  if len(images) <= num:
    return images
  order = np.random.default_rng([seed, _EVAL_NOISE_SALT]).permutation(len(images))
  return images[np.sort(order[:num])]


def from_config(config: ml_collections.ConfigDict, data_u8: np.ndarray
                ) -> tuple[Evaluator, np.ndarray | None]:
  """The config's evaluator with its real reference, and the held-out real images if any."""
  reference, held_out = reference_images(config, data_u8)
  cache_dir = config.cache_dir or image_cache.default_cache_dir()
  return Evaluator(extractor_from_config(config), reference, cache_dir), held_out


def metric_names(evaluator: Evaluator, ema: bool) -> list[str]:
  names = evaluator.metric_names()
  return names + [f"ema_{n}" for n in names] if ema else names


def best_metric_name(config: ml_collections.ConfigDict) -> str:
  """config.best_metric, with 'auto' resolved: the FID of the EMA generator where it is on,
  else of G."""
  if config.best_metric != "auto":
    return config.best_metric
  name = "classifier_fid" if config.evaluator == "classifier" else "fid"
  return f"ema_{name}" if config.g_ema_decay > 0 else name


def evaluate_state(evaluator: Evaluator, gan: steps.GAN, state: steps.TrainState,
                   config: ml_collections.ConfigDict, z_NxZ: jax.Array) -> dict[str, float]:
  """The metrics of G (and of its EMA where the state has one), generated from z in batches
  of config.batch_size with config.sample_bn_mode."""
  out = evaluator.of_images(generate_u8(gan, state, z_NxZ, config.batch_size,
                                        config.sample_bn_mode))
  if state.g_ema_params is not None:
    ema = evaluator.of_images(generate_u8(gan, state, z_NxZ, config.batch_size,
                                          config.sample_bn_mode, ema=True))
    out.update({f"ema_{k}": v for k, v in ema.items()})
  return out
