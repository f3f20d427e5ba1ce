"""The public Python API, exported by dcgan_jax/__init__.py: get_config, fit, load.

  import dcgan_jax
  config = dcgan_jax.get_config("default", num_train_steps=500)
  run = dcgan_jax.fit(config, "runs/digits")      # the run `python main.py` makes
  images = run.generate(16, seed=3)               # uint8 (16, 32, 32, 1), from G's EMA
  run = dcgan_jax.load("runs/digits")             # the same, later

Errors are UsageError, one line naming the argument (workdir=..., label=...) or config field.
"""

import functools

import jax
import ml_collections
import numpy as np

from dcgan_jax import (configs, configuration, errors, eval_run, evaluation, input_pipeline,
                       sampling, steps, train)
from dcgan_jax import workdir as workdir_lib
from dcgan_jax.errors import UsageError


def _api_names(fn):
  """The function's errors name the API's arguments (workdir=...), not the CLI's flags."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with errors.api_names():
      return fn(*args, **kwargs)
  return wrapped

PRESETS = configs.PRESETS

def get_config(preset: str = "default", **overrides) -> ml_collections.ConfigDict:
  """Returns a preset's config (dcgan_jax/configs/<preset>.py) with fields overridden, checked
  as main.py checks its flags: an unknown field, a wrong type or a value out of range raises
  UsageError naming it."""
  if preset not in configs.PRESETS:
    raise UsageError(f"preset {preset!r} is not one of {', '.join(configs.PRESETS)}")
  config = configuration.load_config_file(configs.preset_path(preset))
  for field, value in overrides.items():  # an unknown field is refused by validate
    try:
      config[field] = value
    except (TypeError, ValueError) as e:
      raise UsageError(f"config.{field}={value!r} is a {type(value).__name__}; it must be a "
                       f"{type(config[field]).__name__}") from e
  configuration.validate(config)
  return config


@_api_names
def fit(config: ml_collections.ConfigDict, workdir: str) -> "Run":
  """Trains (or resumes) the run of config in workdir, as `python main.py` does; returns the
  Run of its latest checkpoint (G's EMA where the run keeps one), the final training state as
  run.train_state."""
  state = train.train_and_evaluate(config, workdir)
  run = Run(workdir, "latest", None)
  run.train_state = state
  return run


class Run:
  """A trained run's generator at one checkpoint (see `load`): images from it (generate,
  interpolate), its quality (evaluate), and its variables for a user's own code:

    z = np.random.default_rng(0).normal(size=(8, run.config.nz)).astype(np.float32)
    x = run.generator.apply(run.g_variables, z, train=False)  # [-1, 1], (8, S, S, C)

  (a conditional run's generator takes labels_B= too; train=False uses BatchNorm's running
  averages, the bn_mode 'eval' of generate).
  """

  @_api_names
  def __init__(self, workdir: str, which: str = "latest", ema: bool | None = None):
    self.workdir, self.checkpoint = workdir, which
    self.config, self.gan, self.state, self.step = workdir_lib.restore(workdir, which, ema)
    self.ema = workdir_lib.use_ema(self.state, ema)  # True: images come from G's EMA
    # a conditional run's class names: label i is class_names[i]; () for an unconditional run
    self.class_names = workdir_lib.class_names(self.config, workdir)
    self.train_state: steps.TrainState | None = None  # what fit trained (None from load)

  @property
  def generator(self):
    """G's Flax module (models.Generator)."""
    return self.gan.generator

  @property
  def g_variables(self) -> dict:
    """The generator's variables, {'params', 'batch_stats'}: G's EMA parameters where self.ema,
    as generate uses them."""
    params = self.state.g_ema_params if self.ema else self.state.g_params
    return {"params": params, "batch_stats": self.state.g_batch_stats}

  def _labels(self, label, n: int) -> np.ndarray | None:
    """n labels: label (an int, or a sequence of ints gone through in turn) checked against
    the run's classes; a conditional run's classes in turn where label is None."""
    if label is None:
      return None  # generate_images draws a conditional G's classes evenly
    asked = sampling.check_labels([label] if np.ndim(label) == 0 else list(label),
                                  self.class_names, "label")
    return np.resize(np.asarray(asked, np.int32), n)

  @_api_names
  def generate(self, n: int | None = None, seed: int = 0, batch_size: int = 64,
               bn_mode: str | None = None, label=None, z=None) -> np.ndarray:
    """Generates n images of a seed as uint8 (n, S, S, C): those of `--mode sample
    --sample_seed seed --grid_size batch_size --num_images n`; or, given latents z (N, nz),
    the image of each (n, where given, must be N). A conditional run draws class `label` (an
    index of class_names; a list: its classes in turn; None: every class in turn)."""
    sampling.check_range("batch_size", batch_size, 1, sampling.MAX_GRID_SIZE)
    bn_mode = sampling.resolve_bn_mode(bn_mode, self.config.sample_bn_mode)
    if z is not None:
      z = self._latents(z, n)
      n = len(z)
    elif n is None:
      raise UsageError("generate: give n (how many images) or z (their latents)")
    sampling.check_range("n", n, 1, sampling.MAX_SINGLE_IMAGES)
    sampling.check_range("seed", seed, 0, sampling.MAX_SEED)
    labels = self._labels(label, n)
    if self.gan.num_classes and labels is None:
      labels = np.resize(np.arange(self.gan.num_classes, dtype=np.int32), n)
    if z is None and self.gan.num_classes:  # the singles of --mode sample: their own latents
      z = sampling.fixed_noise(seed, n, self.config.nz, sampling.SAMPLE_SALT)
    if z is not None:
      return sampling.generate_images(self.gan, self.state, z, batch_size, bn_mode, self.ema,
                                      labels)
    z = sampling.fixed_noise(seed, max(n, batch_size), self.config.nz, sampling.SAMPLE_SALT)
    return sampling.generate_images(self.gan, self.state, z, batch_size, bn_mode, self.ema)[:n]

  def _latents(self, z, n: int | None) -> np.ndarray:
    """z as float32 (N, nz), checked: its shape, its size and finite values."""
    z = np.asarray(jax.device_get(z))
    if z.ndim != 2 or z.shape[1] != self.config.nz or not len(z):
      raise UsageError(f"z: shape {z.shape}; latents are (N, nz) = (N, {self.config.nz})")
    if not np.issubdtype(z.dtype, np.number) or np.iscomplexobj(z):
      raise UsageError(f"z: dtype {z.dtype}; latents are real numbers")
    sampling.check_range("len(z)", len(z), 1, sampling.MAX_SINGLE_IMAGES)
    if n is not None and n != len(z):
      raise UsageError(f"n={n} with {len(z)} latents z: give one of them, or the same count")
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: inf, refused below
      z = z.astype(np.float32)
    if not np.all(np.isfinite(z)):
      raise UsageError("z: holds a value that is not finite")
    return z

  @_api_names
  def interpolate(self, seed_a: int, seed_b: int, frames: int = 16, batch_size: int = 64,
                  bn_mode: str | None = None, label: int | None = None) -> np.ndarray:
    """Generates the slerp from seed_a's first latent to seed_b's as uint8 (frames, S, S, C):
    with seed_b = seed_a + 1, the frames of `--mode sample --interpolation_frames frames`. A
    conditional run's interpolation stays within the one class `label` (needed there)."""
    sampling.check_range("seed_a", seed_a, 0, sampling.MAX_SEED)
    sampling.check_range("seed_b", seed_b, 0, sampling.MAX_SEED)
    sampling.check_range("frames", frames, 2, sampling.MAX_INTERPOLATION_FRAMES)
    sampling.check_range("batch_size", batch_size, 1, sampling.MAX_GRID_SIZE)
    bn_mode = sampling.resolve_bn_mode(bn_mode, self.config.sample_bn_mode)
    if self.gan.num_classes and (label is None or np.ndim(label) != 0):
      raise UsageError("interpolate: a conditional run's interpolation stays within one class: "
                       "give label= one class index")
    labels = self._labels(label, frames)
    z = sampling.interpolation_noise(seed_a, seed_b, frames, self.config.nz)
    return sampling.generate_images(self.gan, self.state, z, batch_size, bn_mode, self.ema,
                                    labels)

  @_api_names
  def evaluate(self, evaluator: str | None = None, inception_weights: str | None = None,
               num_samples: int | None = None) -> dict[str, float]:
    """Measures this checkpoint's generator (FID, KID and, with the digit classifier, the
    class histogram) as the run's evaluation does; the run's evaluator unless given."""
    config = eval_run.eval_config(self.config, self.workdir, evaluator, inception_weights,
                                  num_samples, None)
    class_names = workdir_lib.class_names(config, self.workdir)
    judge, _ = evaluation.from_config(config, input_pipeline.load_images(config), class_names)
    state = self.state
    if self.ema:  # measure the EMA as G
      state = state.replace(g_params=state.g_ema_params, g_ema_params=None)
    return evaluation.evaluate_state(judge, self.gan, state, config,
                                     evaluation.eval_noise(config))


def load(workdir: str, checkpoint: str = "latest", ema: bool | None = None) -> Run:
  """Loads a run's latest or best checkpoint for generating and evaluating images: G's EMA
  where the run keeps one (ema=None), or as asked (ema=True: its EMA, refused where it has
  none; ema=False: G itself)."""
  return Run(workdir, checkpoint, ema)
