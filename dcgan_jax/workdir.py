"""What a workdir holds: checks before a run writes there, config.json, and its latest or best
checkpoint restored for use (sampling, evaluation, the page, export)."""

import json
import os
import socket

import ml_collections
from absl import logging

from dcgan_jax import checkpoint, configuration, errors, steps
from dcgan_jax.errors import UsageError

CHECKPOINTS = "checkpoints"  # the latest checkpoints of the run
BEST = "best"  # the best checkpoint by config.best_metric
_MODEL_FIELDS = ("image_size", "channels", "nz", "ngf", "ndf", "d_norm", "spectral_norm")
# The GAN a run trains (docs/guide.md#gan-variants): a resumed run keeps its own.
_GAN_FIELDS = ("loss", "r1_weight", "gp_weight", "d_steps_per_g_step", "diffaugment")


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
    raise UsageError(f"--workdir={workdir!r} cannot be written: {e.strerror or e}") from e


def check_same_gan(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a workdir whose checkpoints are of another model or GAN variant (loss, penalties,
  D steps, augmentation), as its config.json tells, before any work starts (the checkpoints'
  own shapes are checked again as they restore). Length, learning rates, outputs and G's EMA
  may change on resume, and the GAN may while no step is trained (an imported model's step 0)."""
  path = os.path.join(workdir, "config.json")
  stored = checkpoint.step_numbers(checkpoint_dir(workdir))
  if not stored or not os.path.isfile(path):
    return
  try:
    saved = _read_config_json(path)
  except UsageError:
    logging.warning("%s cannot be read; the checkpoints' shapes will be checked", path)
    return
  for field in _MODEL_FIELDS + (_GAN_FIELDS if max(stored) > 0 else ()):
    if field in saved and saved[field] != config[field]:
      value = saved[field]
      if len(str(value)) > configuration.MAX_SHOWN_CHARS:  # no config holds such a value
        raise UsageError(f"--workdir={workdir} holds a run trained with another config.{field} "
                         "(its config.json): use another --workdir")
      raise UsageError(f"--workdir={workdir} holds a run trained with config.{field}="
                       f"{value!r} (its config.json), this config has {config[field]!r}: "
                       f"resume it with --config.{field}={value}, or use another --workdir")


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes workdir/config.json atomically."""
  path = os.path.join(workdir, "config.json")
  with errors.writing(path, undo=lambda: os.remove(f"{path}.tmp")):
    with open(f"{path}.tmp", "w") as f:
      json.dump(config.to_dict(), f, indent=2, sort_keys=True)
    os.replace(f"{path}.tmp", path)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """Reads the config a workdir's run was trained with, fields added since filled in with the
  values that reproduce it, checked as a config file's fields are (types, choices, bounds);
  UsageError naming the file, the field and its value otherwise (a config.json edited by hand,
  or a stranger's)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise UsageError(f"--workdir={workdir!r} has no config.json: train there first")
  config = ml_collections.ConfigDict(_read_config_json(path))
  try:
    configuration.check_values(config)
  except UsageError as e:
    raise UsageError(f"{path}: {e}") from None
  return config


def _read_config_json(path: str) -> dict:
  """A config.json's fields, those added since it was written filled in with the values that
  reproduce its run; UsageError when it is not JSON or not a JSON object."""
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise UsageError(f"{path} cannot be read as JSON ({type(e).__name__})") from e
  if not isinstance(saved, dict):
    raise UsageError(f"{path} is not a config: a JSON object is needed")
  odd = next((k for k in saved if not k.isidentifier()), None)  # ConfigDict refuses "a.b"
  if odd is not None:
    raise UsageError(f"{path}: {configuration.shown(odd)} is not a field of configs/default.py")
  return {**configuration.ADDED_FIELD_DEFAULTS, **saved}


def restore(workdir: str, which: str = "latest", ema: bool = False
            ) -> tuple[ml_collections.ConfigDict, steps.GAN, steps.TrainState, int]:
  """Restores (config, GAN, state, step) of the workdir's latest or best checkpoint; with
  ema=True, refuses a run that kept no EMA of G."""
  folder = checkpoint_dir(workdir, which)
  config = load_config(workdir)
  if not os.path.isdir(folder):
    raise UsageError(f"--workdir={workdir!r} has no {which} checkpoint ({folder} is missing)")
  gan = steps.gan_from_config(config)
  found = checkpoint.restore_newest(folder, steps.abstract_train_state(gan))
  if found is None:
    raise UsageError(f"--workdir={workdir!r} has no {which} checkpoint to sample from")
  state, step = found
  if ema and state.g_ema_params is None:
    raise UsageError(f"--workdir={workdir!r} was trained without a generator EMA "
                     "(config.g_ema_decay=0)")
  return config, gan, state, step
