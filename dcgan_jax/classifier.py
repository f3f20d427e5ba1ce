"""A small digit classifier trained on the embedded MNIST digits.

It measures generated digits offline: its penultimate features give "classifier FID/KID"
(fid.py) and its predictions the class histogram of samples (all ten classes present = no
mode collapse). Trained by the project, deterministically from a seed, on 400 digits per
class; the last 100 digits of each class are held out for its accuracy.

The classifier of seed 0, the one evaluation uses, ships inside the package (data/), made by

  python -m dcgan_jax.classifier build        # about a minute on 2 CPU cores

so that runs load it at once; another seed, or a shipped file that fails its check, is
trained on first use and cached.
"""

import argparse
import dataclasses
import functools
import hashlib
import json
import pathlib
import sys
import time

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from PIL import Image

from dcgan_jax import decode, errors, input_pipeline
from dcgan_jax.errors import UsageError
from dcgan_jax.steps import to_float

IMAGE_SIZE = 32
HELD_OUT_PER_CLASS = 100
VERSION = 1  # bump when the network, the data split or the training changes


class DigitClassifier(nn.Module):
  """(B, 32, 32, 1) images in [-1, 1] -> (logits (B, 10), features (B, features))."""
  features: int = 64

  @nn.compact
  def __call__(self, x_BxSxSx1: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = x_BxSxSx1
    for width in (16, 32):
      x = nn.relu(nn.Conv(width, (3, 3))(x))
      x = nn.relu(nn.Conv(width, (3, 3))(x))
      x = nn.max_pool(x, (2, 2), (2, 2))
    features = nn.relu(nn.Dense(self.features)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(features), features


@dataclasses.dataclass(frozen=True)
class Split:
  train_images: np.ndarray  # uint8 (N, 32, 32, 1)
  train_labels: np.ndarray
  held_out_images: np.ndarray
  held_out_labels: np.ndarray


def held_out_mask(labels: np.ndarray) -> np.ndarray:
  """Returns True for the last HELD_OUT_PER_CLASS digits of each class (in file order)."""
  held_out = np.zeros(len(labels), bool)
  for c in range(10):
    held_out[np.flatnonzero(labels == c)[-HELD_OUT_PER_CLASS:]] = True
  return held_out


def embedded_split() -> Split:
  """Returns the embedded digits at 32x32 (the embedded default's preprocessing), split per class
  by held_out_mask."""
  digits, labels = input_pipeline.embedded_digits()
  images = np.stack([decode.preprocess(Image.fromarray(d), IMAGE_SIZE, 1) for d in digits])
  held_out = held_out_mask(labels)
  return Split(images[~held_out], labels[~held_out], images[held_out], labels[held_out])


def _shift(key: jax.Array, images_BxSxSx1: jax.Array, max_shift: int) -> jax.Array:
  """Translates each image by a random whole number of pixels in [-max_shift, max_shift]."""
  size = images_BxSxSx1.shape[1]
  padded = jnp.pad(images_BxSxSx1, ((0, 0), (max_shift,) * 2, (max_shift,) * 2, (0, 0)),
                   constant_values=-1.0)
  offsets = jax.random.randint(key, (images_BxSxSx1.shape[0], 2), 0, 2 * max_shift + 1)
  crop = lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (size, size, 1))  # noqa: E731
  return jax.vmap(crop)(padded, offsets)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _train_step(model: DigitClassifier, tx: optax.GradientTransformation, params, opt_state,
                key, images_u8, labels):
  images = _shift(key, to_float(images_u8), 2)

  def loss_fn(p):
    logits, _ = model.apply({"params": p}, images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


@functools.partial(jax.jit, static_argnums=0)
def apply(model: DigitClassifier, params, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Logits and features of float images in [-1, 1]."""
  return model.apply({"params": params}, images)


def predict(model: DigitClassifier, params, images: np.ndarray, batch_size: int = 500
            ) -> tuple[np.ndarray, np.ndarray]:
  """Returns predicted classes (N,) and features (N, F) of float images in [-1, 1], in batches."""
  classes, features = [], []
  for i in range(0, len(images), batch_size):
    logits, feats = apply(model, params, jnp.asarray(images[i:i + batch_size], jnp.float32))
    classes.append(np.asarray(jnp.argmax(logits, -1)))
    features.append(np.asarray(feats))
  return np.concatenate(classes), np.concatenate(features)


def train(split: Split, seed: int = 0, epochs: int = 12, batch_size: int = 100,
          learning_rate: float = 1e-3) -> tuple[DigitClassifier, dict, float]:
  """Trains the classifier (Adam, random shifts of up to 2 px); returns the model, its
  params and the held-out accuracy."""
  model = DigitClassifier()
  key = jax.random.PRNGKey(seed)
  init_key, key = jax.random.split(key)
  params = model.init(init_key, jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 1)))["params"]
  steps_per_epoch = len(split.train_labels) // batch_size
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, epochs * steps_per_epoch))
  opt_state = tx.init(params)
  rng = np.random.default_rng(seed)
  for _ in range(epochs):
    order = rng.permutation(len(split.train_labels))
    for i in range(steps_per_epoch):
      idx = order[i * batch_size:(i + 1) * batch_size]
      key, step_key = jax.random.split(key)
      params, opt_state, _ = _train_step(model, tx, params, opt_state, step_key,
                                         split.train_images[idx], split.train_labels[idx])
  predicted, _ = predict(model, params, to_float(split.held_out_images))
  return model, params, float(np.mean(predicted == split.held_out_labels))


SHIPPED_SEED = 0
SHIPPED_DIR = pathlib.Path(__file__).resolve().parent / "data"


class _Unreadable(Exception):
  """A classifier file that cannot be used; the message says why."""


def _paths(folder: str | pathlib.Path, seed: int) -> tuple[pathlib.Path, pathlib.Path]:
  """The weights (.msgpack) and their description (.json) of a seed's classifier in folder."""
  path = pathlib.Path(folder) / f"digit_classifier_v{VERSION}_seed{seed}.msgpack"
  return path, path.with_suffix(".json")


def _template(model: DigitClassifier) -> dict:
  """The params' structure, shapes and dtypes, computed without running (or compiling) init."""
  return jax.eval_shape(model.init, jax.random.PRNGKey(0),
                        jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 1)))["params"]


def _read(folder: str | pathlib.Path, seed: int, model: DigitClassifier) -> tuple[dict, float]:
  """Reads a classifier's params and held-out accuracy; raises _Unreadable (a file missing, its
  bytes not the SHA-256 its description names, msgpack, JSON, keys or shapes wrong)."""
  path, meta_path = _paths(folder, seed)
  try:
    data = path.read_bytes()
    meta = json.loads(meta_path.read_text())
    if "sha256" in meta and hashlib.sha256(data).hexdigest() != meta["sha256"]:
      raise ValueError(f"its SHA-256 is not {meta['sha256'][:16]}...")
    template = _template(model)
    params = flax.serialization.from_bytes(template, data)
    accuracy = float(meta["held_out_accuracy"])
    if [np.shape(p) for p in jax.tree.leaves(params)] != [
        t.shape for t in jax.tree.leaves(template)]:
      raise ValueError("parameter shapes differ")
  except Exception as e:  # a missing file, msgpack, json, key and shape errors alike  # noqa: BLE001
    raise _Unreadable(f"{type(e).__name__}: {e}"[:200]) from e
  return params, accuracy


def _write(folder: str | pathlib.Path, seed: int, params: dict, accuracy: float) -> pathlib.Path:
  """Writes a classifier's weights and description (accuracy, seed, SHA-256 of the weights),
  each renamed into place only when complete; returns the weights' path."""
  path, meta_path = _paths(folder, seed)
  path.parent.mkdir(parents=True, exist_ok=True)
  data = flax.serialization.to_bytes(params)
  meta = {"held_out_accuracy": accuracy, "seed": seed, "version": VERSION,
          "sha256": hashlib.sha256(data).hexdigest(),
          "made_with": {"jax": jax.__version__, "flax": flax.__version__}}
  for target, content in ((path, data), (meta_path, (json.dumps(meta, indent=1) + "\n").encode())):
    tmp = target.with_name(target.name + ".tmp")
    with errors.writing(str(target), undo=tmp.unlink):
      tmp.write_bytes(content)
      tmp.replace(target)
  return path


def identity(params: dict) -> str:
  """A short digest of the weights: what the classifier's features depend on."""
  return hashlib.sha256(flax.serialization.to_bytes(params)).hexdigest()[:16]


def load_or_train(cache_dir: str | pathlib.Path, seed: int = 0
                  ) -> tuple[DigitClassifier, dict, float]:
  """Returns the classifier of a seed: the one shipped in the package (seed 0), else the one
  in cache_dir, else one trained now and stored there (saying so)."""
  model = DigitClassifier()
  if seed == SHIPPED_SEED:
    try:
      return (model, *_read(SHIPPED_DIR, seed, model))
    except _Unreadable as e:
      logging.warning("the digit classifier shipped with dcgan-jax, %s, cannot be used (%s); "
                      "training one instead", _paths(SHIPPED_DIR, seed)[0], e)
  path = _paths(cache_dir, seed)[0]
  if path.exists() and path.with_suffix(".json").exists():
    try:
      return (model, *_read(cache_dir, seed, model))
    except _Unreadable as e:
      raise UsageError(f"{path}: the cached digit classifier cannot be read ({e}); delete it "
                       "and its .json to train it again") from None
  logging.info("training the digit classifier that measures image quality (once; about a "
               "minute on 2 CPU cores), cached as %s", path)
  t0 = time.perf_counter()
  model, params, accuracy = train(embedded_split(), seed)
  logging.info("digit classifier trained in %.0f s", time.perf_counter() - t0)
  _write(cache_dir, seed, params, accuracy)
  return model, params, accuracy


def main(argv: list[str] | None = None) -> None:
  """`python -m dcgan_jax.classifier build`: trains the classifier that ships in the package."""
  parser = argparse.ArgumentParser(prog="python -m dcgan_jax.classifier",
                                   description="Builds the digit classifier shipped in the "
                                               "package (seed 0, deterministic).")
  parser.add_argument("command", choices=["build"])
  parser.add_argument("--out", default=str(SHIPPED_DIR),
                      help="the folder to write it to (default: the package's data folder)")
  parser.add_argument("--seed", type=int, default=SHIPPED_SEED)
  args = parser.parse_args(argv)
  if not 0 <= args.seed < 2**32:
    parser.error(f"--seed {args.seed} must be in [0, 2**32)")
  t0 = time.perf_counter()
  _, params, accuracy = train(embedded_split(), args.seed)
  path = _write(args.out, args.seed, params, accuracy)
  print(f"{path}: held-out accuracy {accuracy:.4f}, trained in "
        f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
  main()
