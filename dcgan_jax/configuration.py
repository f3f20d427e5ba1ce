"""Config checks (before anything is written) and quantities derived from a config."""

import difflib
import importlib.util
import math
import os

from dcgan_jax import augment, configs, losses, ops, steps
from dcgan_jax.errors import UsageError
from dcgan_jax.models import D_NORMS, SUPPORTED_IMAGE_SIZES, num_stride2_layers


# Config fields added after the first release, with the values that reproduce runs made
# before them; a workdir's saved config gets these where it lacks them.
ADDED_FIELD_DEFAULTS = {"downconv_impl": "auto", "compute_dtype": "float32",
                        "g_ema_decay": 0.0, "evaluator": "", "eval_every_steps": 0,
                        "eval_num_samples": 10000, "inception_weights": "",
                        "best_metric": "auto", "num_devices": 0,
                        "max_image_pixels": 120_000_000, "tensorboard": False,
                        "loss": "bce", "d_norm": "auto", "spectral_norm": False,
                        "gp_weight": 10.0, "r1_weight": 0.0, "d_steps_per_g_step": 1,
                        "diffaugment": "", "deterministic": False, "conditional": False,
                        "max_classes": 1000, "classes": "", "init_from": "",
                        "init_checkpoint": "latest", "init_g_ema": False,
                        "freeze_d_layers": 0}

MAX_STEPS = 2**31 - 1  # the step counter is int32
# Upper bounds of integer fields: what the program can honour on one machine.
INT_BOUNDS = {"batch_size": 65_536, "nz": 1_024, "ngf": 512, "ndf": 512,
              "num_sample_images": 1_024, "steps_per_dispatch": 1_000, "prefetch_batches": 64,
              "decode_workers": 256, "eval_num_samples": 100_000, "num_devices": 65_536,
              "max_checkpoints_to_keep": 1_000_000, "log_every_steps": MAX_STEPS,
              "checkpoint_every_steps": MAX_STEPS, "sample_every_steps": MAX_STEPS,
              "eval_every_steps": MAX_STEPS, "num_train_steps": MAX_STEPS,
              "max_image_pixels": 178_956_970,  # Pillow refuses larger images itself
              "d_steps_per_g_step": steps.MAX_D_STEPS, "max_classes": 100_000}


DEFAULT_CONFIG_FILE = configs.preset_path("default")


def load_config_file(path: str = DEFAULT_CONFIG_FILE):
  """Returns the ConfigDict of a config file's get_config() (configs/default.py's by default)."""
  spec = importlib.util.spec_from_file_location("dcgan_jax_config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


MAX_SHOWN_CHARS = 100  # a longer value (a crafted config.json's) is not repeated whole
MAX_TEXT_CHARS = 65_536  # free-text fields (class lists, paths)


def shown(value) -> str:
  """repr(value), cut to a bounded length for a one-line message."""
  text = repr(value)
  if len(text) <= MAX_SHOWN_CHARS:
    return text
  return f"{text[:MAX_SHOWN_CHARS - 40]}... ({len(text):,} characters)"


def _require(ok: bool, field: str, value, why: str) -> None:
  if not ok:
    raise UsageError(f"config.{field}={shown(value)} {why}")


def _same_kind(value, default) -> bool:
  if isinstance(default, bool) or isinstance(value, bool):
    return isinstance(value, bool) and isinstance(default, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float))
  return default is None or isinstance(value, type(default))


def check_fields(config, reference) -> None:
  """Raises UsageError unless config has exactly reference's fields (configs/default.py's),
  each of the reference's type (an int where a float is expected is fine)."""
  have, want = config.to_dict(), reference.to_dict()
  for field, default in want.items():
    if field not in have:
      raise UsageError(f"config.{field} is missing (configs/default.py defines every field; "
                       "a config file should start from its get_config())")
    if not _same_kind(have[field], default):
      raise UsageError(f"config.{field}={shown(have[field])} is a {type(have[field]).__name__}; "
                       f"it must be a {type(default).__name__}")
  unknown = sorted(set(have) - set(want))
  if unknown:
    close = difflib.get_close_matches(str(unknown[0]), want, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise UsageError(f"config.{str(unknown[0])[:MAX_SHOWN_CHARS]} is not a field of "
                     f"configs/default.py ({hint}a misspelt field would be ignored)")


def validate(config) -> None:
  """Raises UsageError naming the first field that configs/default.py lacks, is missing, is of
  another type, or whose value cannot work, or whose folder or dataset cannot be found."""
  check_values(config)
  _check_paths(config)
  if config.dataset.startswith("tfds:"):
    from dcgan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    input_pipeline.check_tfds_name(config.dataset[5:])


def check_values(config) -> None:
  """validate's checks of the fields themselves (types, choices, bounds), without looking at
  this machine's folders or datasets: what a workdir's config.json must pass, wherever the run
  was trained."""
  check_fields(config, load_config_file())
  c = config
  _require(c.image_size in SUPPORTED_IMAGE_SIZES, "image_size", c.image_size,
           f"is not supported; choose one of {', '.join(map(str, SUPPORTED_IMAGE_SIZES))}")
  _require(c.channels in (1, 3), "channels", c.channels, "must be 1 or 3")
  ds = c.dataset
  _require(ds in ("embedded", "imagefolder") or (ds.startswith("tfds:") and len(ds) > 5),
           "dataset", ds, "is not 'embedded', 'imagefolder' or 'tfds:<name>'")
  for field in ("batch_size", "nz", "ngf", "ndf", "log_every_steps", "steps_per_dispatch",
                "checkpoint_every_steps", "sample_every_steps", "num_sample_images"):
    _require(c[field] > 0, field, c[field], "must be positive")
  _require(c.num_train_steps > 0 or c.num_train_steps == -1, "num_train_steps",
           c.num_train_steps, "must be positive, or -1 to use num_epochs")
  if c.num_train_steps == -1:
    _require(c.num_epochs > 0, "num_epochs", c.num_epochs,
             "must be positive when num_train_steps is -1")
  _require(0 <= c.seed < 2**32, "seed", c.seed, "must be in [0, 2**32)")
  for field in ("g_learning_rate", "d_learning_rate", "adam_eps"):
    _require(c[field] > 0 and math.isfinite(c[field]), field, c[field],
             "must be positive and finite")
  _require(c.num_epochs == -1 or math.isfinite(c.num_epochs), "num_epochs", c.num_epochs,
           "must be finite")
  for field, high in INT_BOUNDS.items():
    _require(c[field] <= high, field, c[field], f"is too large (at most {high:,})")
  _require(c.max_image_pixels > 0, "max_image_pixels", c.max_image_pixels, "must be positive")
  _require(c.max_classes >= 1, "max_classes", c.max_classes, "must be positive")
  _require(len(c.classes) <= MAX_TEXT_CHARS, "classes", c.classes,
           f"is too long (at most {MAX_TEXT_CHARS:,} characters)")
  if c.classes:
    asked = [t.strip() for t in c.classes.split(",")]
    _require(all(asked), "classes", c.classes, "has an empty name: names or indices, "
             "comma-separated")
    _require(len(set(asked)) == len(asked), "classes", c.classes, "names a class twice")
  _require(len(c.init_from) <= MAX_TEXT_CHARS, "init_from", c.init_from,
           f"is too long (at most {MAX_TEXT_CHARS:,} characters)")
  _require(c.init_checkpoint in ("latest", "best"), "init_checkpoint", c.init_checkpoint,
           "is not 'latest' or 'best'")
  for field in ("adam_b1", "adam_b2", "label_smoothing"):
    _require(0.0 <= c[field] < 1.0, field, c[field], "must be in [0, 1)")
  _require(c.upconv_impl in ops.UPCONV_IMPLS, "upconv_impl", c.upconv_impl,
           f"is not one of {', '.join(ops.UPCONV_IMPLS)}")
  _require(c.downconv_impl in ops.DOWNCONV_IMPLS, "downconv_impl", c.downconv_impl,
           f"is not one of {', '.join(ops.DOWNCONV_IMPLS)}")
  _require(c.compute_dtype in ("float32", "bfloat16"), "compute_dtype", c.compute_dtype,
           "is not 'float32' or 'bfloat16'")
  _require(c.sample_bn_mode in ("train", "eval"), "sample_bn_mode", c.sample_bn_mode,
           "is not 'train' or 'eval'")
  _require(c.num_devices >= 0, "num_devices", c.num_devices, "must be >= 0 (0 uses all)")
  _require(c.prefetch_batches >= 1, "prefetch_batches", c.prefetch_batches, "must be >= 1")
  _require(c.decode_workers >= 0, "decode_workers", c.decode_workers,
           "must be >= 0 (0 uses all cores)")
  _require(0.0 <= c.g_ema_decay < 1.0, "g_ema_decay", c.g_ema_decay, "must be in [0, 1)")
  _validate_variants(c)
  _validate_evaluation(c)
  _require(c.max_checkpoints_to_keep >= 0, "max_checkpoints_to_keep",
           c.max_checkpoints_to_keep, "must be >= 0 (0 keeps all)")
  if ds.startswith("tfds:"):
    _require(bool(c.split), "split", c.split, "must name a tfds split, e.g. 'train'")


def _check_paths(c) -> None:
  """Paths that must be folders (the data folder is checked as it is listed, the Inception
  weights as they load, each with its own message)."""
  if c.cache_dir:
    _require(_creatable(c.cache_dir), "cache_dir", c.cache_dir,
             "is not a folder that exists or can be made here")
  if c.data_dir:
    try:
      os.path.realpath(os.path.expanduser(c.data_dir), strict=True)
    except FileNotFoundError:
      pass  # the data source says what is missing, naming the dataset
    except OSError as e:  # a symlink loop, a path that cannot be searched
      raise UsageError(f"config.data_dir={shown(c.data_dir)} cannot be resolved "
                       f"({e.strerror or type(e).__name__})") from None


def _creatable(path: str) -> bool:
  """Tells whether path is a folder, or the first of its ancestors that exists is a writable one."""
  path = os.path.abspath(os.path.expanduser(path))
  while not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      return False
    path = parent
  return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def _validate_variants(c) -> None:
  _require(c.loss in losses.LOSSES, "loss", c.loss, f"is not one of {', '.join(losses.LOSSES)}")
  _require(c.d_norm in ("auto",) + D_NORMS, "d_norm", c.d_norm,
           f"is not one of {', '.join(('auto',) + D_NORMS)}")
  if c.loss == "wgan_gp":
    _require(c.d_norm != "batch", "d_norm", c.d_norm,
             "cannot be used with loss='wgan_gp': its gradient penalty is taken per image, and "
             "BatchNorm mixes the images of a batch; use 'auto' (LayerNorm), 'layer' or 'none'")
  if c.loss in ("hinge", "wgan_gp"):
    _require(c.label_smoothing == 0.0, "label_smoothing", c.label_smoothing,
             f"has no target to smooth with loss={c.loss!r}; set it to 0")
  for field in ("gp_weight", "r1_weight"):
    _require(c[field] >= 0.0 and math.isfinite(c[field]), field, c[field],
             "must be >= 0 and finite")
  _require(c.d_steps_per_g_step >= 1, "d_steps_per_g_step", c.d_steps_per_g_step,
           "must be >= 1")
  blocks = num_stride2_layers(c.image_size)
  _require(0 <= c.freeze_d_layers <= blocks, "freeze_d_layers", c.freeze_d_layers,
           f"must be from 0 to {blocks} (D's strided blocks at image_size {c.image_size})")
  try:
    augment.parse(c.diffaugment)
  except ValueError as e:
    raise UsageError(f"config.diffaugment={shown(c.diffaugment)}: {str(e)[:200]}") from None


def images_per_step(config) -> int:
  """Returns the real images one iteration reads: a batch per D update."""
  return config.batch_size * config.d_steps_per_g_step


def _validate_evaluation(c) -> None:
  _require(c.evaluator in ("", "classifier", "inception"), "evaluator", c.evaluator,
           "is not 'classifier', 'inception' or '' (none)")
  _require(c.eval_every_steps >= 0, "eval_every_steps", c.eval_every_steps,
           "must be >= 0 (0: never)")
  _require(c.eval_num_samples >= 10, "eval_num_samples", c.eval_num_samples, "must be >= 10")
  if c.evaluator == "classifier":
    _require(c.channels == 1, "evaluator", c.evaluator,
             f"measures 1-channel digits; config.channels is {c.channels}")
  if c.evaluator == "inception":
    _require(bool(c.inception_weights), "inception_weights", c.inception_weights,
             "is needed by evaluator='inception': the path of pt_inception-2015-12-05-6726825d.pth")
  names = ["auto"]
  if c.evaluator:
    base = ["classifier_fid", "classifier_kid"] if c.evaluator == "classifier" else ["fid", "kid"]
    names += base + ([f"ema_{n}" for n in base] if c.g_ema_decay > 0 else [])
  _require(c.best_metric in names, "best_metric", c.best_metric,
           f"is not one of {', '.join(names)} (with this evaluator and g_ema_decay)")


def total_steps(config, num_images: int) -> int:
  """Returns num_train_steps, or num_epochs worth of full batches when it is -1 (UsageError if that
  is more than the step counter holds)."""
  if config.num_train_steps != -1:
    return config.num_train_steps
  total = max(1, math.ceil(config.num_epochs * (num_images // images_per_step(config))))
  _require(total <= MAX_STEPS, "num_epochs", config.num_epochs,
           f"makes {total:,} steps of {num_images:,} images; at most {MAX_STEPS:,}")
  return total
