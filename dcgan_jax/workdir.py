"""What a workdir holds: checks before a run writes there, config.json, and its latest or best
checkpoint restored for use (sampling, evaluation, the page, export)."""

import json
import os
import socket

import ml_collections
from absl import logging

from dcgan_jax import checkpoint, configuration, errors, steps
from dcgan_jax.errors import UsageError, given, given_config

CHECKPOINTS = "checkpoints"  # the latest checkpoints of the run
BEST = "best"  # the best checkpoint by config.best_metric
_MODEL_FIELDS = ("image_size", "channels", "nz", "ngf", "ndf", "d_norm", "spectral_norm",
                 "conditional")
CLASSES = "classes.json"  # a conditional run's class names, in label order
_MAX_CLASS_NAME_CHARS = 1024
_MAX_CLASSES_BYTES = 64 * 2**20
# The GAN a run trains (docs/guide.md#gan-variants): a resumed run keeps its own.
_GAN_FIELDS = ("loss", "r1_weight", "gp_weight", "d_steps_per_g_step", "diffaugment")
# A run's batch, noise and start: a resumed run keeps them too (its data order and noise depend
# on batch_size and seed).
_RUN_FIELDS = ("batch_size", "seed", "init_from", "init_checkpoint", "init_g_ema")
# Fields a resumed run may not change (refused in one line); all but the model's may while no
# step is trained (an imported model's step 0).
FIXED_ON_RESUME = _MODEL_FIELDS + _GAN_FIELDS + _RUN_FIELDS
# Fields a resumed run may change: each change is logged and kept in config.json's "history"
# with the step it took effect from. The data may change while its number of images stays (the
# checkpoint records it); G's EMA, turned on, starts at G.
CHANGEABLE_ON_RESUME = (
    "num_train_steps", "num_epochs", "g_learning_rate", "d_learning_rate", "adam_b1",
    "adam_b2", "adam_eps", "label_smoothing", "g_ema_decay", "log_every_steps",
    "checkpoint_every_steps", "sample_every_steps", "num_sample_images",
    "max_checkpoints_to_keep", "evaluator", "eval_every_steps", "eval_num_samples",
    "inception_weights", "best_metric", "sample_bn_mode", "tensorboard", "dataset", "split",
    "data_dir", "classes", "jpeg_draft", "max_image_pixels", "cache_dir", "strict_data",
    "decode_workers", "prefetch_batches", "data_on_device", "steps_per_dispatch",
    "num_devices", "compute_dtype", "upconv_impl", "downconv_impl", "deterministic",
    "max_classes", "freeze_d_layers")
HISTORY = "history"  # config.json's list of {"step": N, "changed": {field: [old, new]}}


def checkpoint_dir(workdir: str, which: str = "latest") -> str:
  """Returns the folder of the workdir's latest or best checkpoints."""
  if which not in ("latest", "best"):
    raise UsageError(f"checkpoint={which!r} is not 'latest' or 'best'")
  return os.path.join(workdir, CHECKPOINTS if which == "latest" else BEST)


def check_writable(workdir: str) -> None:
  """Creates workdir if needed and proves it is writable, touching nothing in it."""
  probe = os.path.join(workdir, f".write_probe_{socket.gethostname()}_{os.getpid()}")
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UsageError(f"{given('workdir', workdir)} cannot be written: {e.strerror or e}") from e


def check_same_gan(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a workdir whose checkpoints are of another run, as its config.json tells, before
  any work starts: another model, GAN variant (loss, penalties, D steps, augmentation), batch,
  seed or start (FIXED_ON_RESUME; the checkpoints' own shapes are checked again as they
  restore). CHANGEABLE_ON_RESUME may change (record_config keeps each change), and all but the
  model may while no step is trained (an imported model's step 0)."""
  path = os.path.join(workdir, "config.json")
  stored = checkpoint.step_numbers(checkpoint_dir(workdir))
  if not stored or not os.path.isfile(path):
    return
  try:
    saved = _read_config_json(path)
  except UsageError:
    logging.warning("%s cannot be read; the checkpoints' shapes will be checked", path)
    return
  fixed = FIXED_ON_RESUME if max(stored) > 0 else _MODEL_FIELDS
  for field in fixed:
    if field in saved and saved[field] != config[field]:
      value = saved[field]
      if len(str(value)) > configuration.MAX_SHOWN_CHARS:  # no config holds such a value
        raise UsageError(f"{given('workdir', workdir)} holds a run trained with another "
                         f"config.{field} (its config.json): use another {given('workdir')}")
      raise UsageError(f"{given('workdir', workdir)} holds a run trained with config.{field}="
                       f"{value!r} (its config.json), this config has {config[field]!r}: "
                       f"resume it with {given_config(field, value)}, or use another "
                       f"{given('workdir')}")


def write_config(config: ml_collections.ConfigDict, workdir: str,
                 history: list | None = None) -> None:
  """Writes workdir/config.json atomically (with the run's history of changes, if any)."""
  path = os.path.join(workdir, "config.json")
  saved = config.to_dict()
  if history:
    saved[HISTORY] = history
  errors.write_json(path, saved, indent=2, sort_keys=True)


def record_config(config: ml_collections.ConfigDict, workdir: str, step: int) -> list[str]:
  """Writes config.json for a run at `step`: a resumed run's changed fields (those
  check_same_gan let through) are logged and appended to its history with the step they take
  effect from. Returns the changes, a 'field old -> new' each."""
  path = os.path.join(workdir, "config.json")
  saved, history = {}, []
  if step > 0 and os.path.isfile(path):
    try:
      saved, history = _read_config_file(path)
    except UsageError:
      logging.warning("%s cannot be read: it is written anew, without the run's history", path)
  changed = {f: [saved[f], config[f]] for f in config.keys()
             if f in saved and saved[f] != config[f]}
  lines = [f"{f} {configuration.shown(a)} -> {configuration.shown(b)}"
           for f, (a, b) in changed.items()]
  if changed:
    history.append({"step": step, "changed": changed})
    logging.info("resuming at step %d with changed settings: %s", step, ", ".join(lines))
  write_config(config, workdir, history)
  return lines


def write_classes(workdir: str, class_names: tuple[str, ...]) -> None:
  """Writes a conditional run's class names (label i is class_names[i]) into workdir/classes.json,
  atomically."""
  errors.write_json(os.path.join(workdir, CLASSES), list(class_names), indent=1)


def read_classes(workdir: str, max_classes: int) -> tuple[str, ...] | None:
  """A conditional run's class names from workdir/classes.json; None where there is none.
  UsageError naming the file for anything but a list of 1 to max_classes distinct names."""
  path = os.path.join(workdir, CLASSES)
  if not os.path.isfile(path):
    return None
  try:
    if os.path.getsize(path) > _MAX_CLASSES_BYTES:
      raise UsageError(f"{path} is larger than {_MAX_CLASSES_BYTES // 2**20} MiB: not a list of "
                       "class names")
    with open(path) as f:
      names = json.load(f)
  except (OSError, ValueError) as e:
    raise UsageError(f"{path} cannot be read as JSON ({type(e).__name__})") from e
  if (not isinstance(names, list) or not 1 <= len(names) <= max_classes
      or not all(isinstance(n, str) and len(n) <= _MAX_CLASS_NAME_CHARS for n in names)
      or len(set(names)) != len(names)):
    raise UsageError(f"{path} is not a list of 1 to {max_classes:,} distinct class names "
                     f"(strings of at most {_MAX_CLASS_NAME_CHARS} characters)")
  return tuple(names)


def check_same_classes(workdir: str, class_names: tuple[str, ...], max_classes: int) -> None:
  """Refuses a workdir whose run was trained on another list of classes (a label's meaning
  would change)."""
  saved = read_classes(workdir, max_classes)
  if saved is not None and saved != tuple(class_names):
    raise UsageError(f"{given('workdir', workdir)} holds a run trained on {len(saved)} classes "
                     f"{configuration.shown(list(saved))} ({CLASSES}); the data has "
                     f"{len(class_names)}: {configuration.shown(list(class_names))}: use the "
                     f"same data or another {given('workdir')}")


def class_names(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, ...]:
  """The class names of a workdir's run (config: its config.json's); () for an unconditional
  run, UsageError for a conditional one without its classes.json."""
  if not config.conditional:
    return ()
  names = read_classes(workdir, config.max_classes)
  if names is None:
    raise UsageError(f"{given('workdir', workdir)} holds a conditional run without its {CLASSES}")
  return names


def num_classes(config: ml_collections.ConfigDict, workdir: str) -> int:
  """The classes a workdir's run is conditional on (0 for an unconditional run)."""
  return len(class_names(config, workdir))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """Reads the config a workdir's run was trained with, fields added since filled in with the
  values that reproduce it, checked as a config file's fields are (types, choices, bounds);
  UsageError naming the file, the field and its value otherwise (a config.json edited by hand,
  or a stranger's)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise UsageError(f"{given('workdir', workdir)} has no config.json: train there first")
  config = ml_collections.ConfigDict(_read_config_json(path))
  try:
    configuration.check_values(config)
  except UsageError as e:
    raise UsageError(f"{path}: {e}") from None
  return config


def _read_config_json(path: str) -> dict:
  """A config.json's fields, those added since it was written filled in with the values that
  reproduce its run; UsageError when it is not JSON or not a JSON object."""
  return _read_config_file(path)[0]


def _read_config_file(path: str) -> tuple[dict, list[dict]]:
  """A config.json's fields (as _read_config_json gives them) and its history of changes (the
  entries that are JSON objects; [] where it has none, or none that is a list)."""
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise UsageError(f"{path} cannot be read as JSON ({type(e).__name__})") from e
  if not isinstance(saved, dict):
    raise UsageError(f"{path} is not a config: a JSON object is needed")
  history = saved.pop(HISTORY, [])  # the changes a resume made
  history = [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []
  odd = next((k for k in saved if not k.isidentifier()), None)  # ConfigDict refuses "a.b"
  if odd is not None:
    raise UsageError(f"{path}: {configuration.shown(odd)} is not a field of configs/default.py")
  return {**configuration.ADDED_FIELD_DEFAULTS, **saved}, history


def use_ema(state: steps.TrainState, ema: bool | None) -> bool:
  """Which generator a reader of a run gets: G's EMA where asked (ema=True) and, by default
  (ema=None), where the run keeps one (its images are better: README, Results); G itself with
  ema=False."""
  return state.g_ema_params is not None if ema is None else ema


def restore(workdir: str, which: str = "latest", ema: bool | None = False
            ) -> tuple[ml_collections.ConfigDict, steps.GAN, steps.TrainState, int]:
  """Restores (config, GAN, state, step) of the workdir's latest or best checkpoint; with
  ema=True, refuses a run that kept no EMA of G."""
  folder = checkpoint_dir(workdir, which)
  config = load_config(workdir)
  if not os.path.isdir(folder):
    raise UsageError(f"{given('workdir', workdir)} has no {which} checkpoint ({folder} is missing)")
  gan = steps.gan_from_config(config, num_classes=num_classes(config, workdir))
  found = checkpoint.restore_newest(folder, steps.abstract_train_state(gan))
  if found is None:
    raise UsageError(f"{given('workdir', workdir)} has no {which} checkpoint to sample from")
  state, step = found
  if ema and state.g_ema_params is None:
    raise UsageError(f"{given('workdir', workdir)} was trained without a generator EMA "
                     "(config.g_ema_decay=0)")
  return config, gan, state, step
