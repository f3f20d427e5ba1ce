"""The public Python API, exported by dcgan_jax/__init__.py: get_config, fit, load.

  import dcgan_jax
  config = dcgan_jax.get_config("default", num_train_steps=500)
  dcgan_jax.fit(config, "runs/digits")            # the run `python main.py` makes
  run = dcgan_jax.load("runs/digits")             # its latest checkpoint
  images = run.generate(16, seed=3)               # uint8 (16, 32, 32, 1)
"""

import ml_collections
import numpy as np

from dcgan_jax import (configs, configuration, eval_run, evaluation, input_pipeline, sampling,
                       steps, train)
from dcgan_jax import workdir as workdir_lib
from dcgan_jax.errors import UsageError

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


def fit(config: ml_collections.ConfigDict, workdir: str) -> steps.TrainState:
  """Trains (or resumes) the run of config in workdir, as `python main.py` does; returns the
  final training state."""
  return train.train_and_evaluate(config, workdir)


class Run:
  """A trained run's generator at one checkpoint (see `load`)."""

  def __init__(self, workdir: str, which: str, ema: bool):
    self.workdir, self.checkpoint, self.ema = workdir, which, ema
    self.config, self.gan, self.state, self.step = workdir_lib.restore(workdir, which, ema)
    # a conditional run's class names: label i is class_names[i]; () for an unconditional run
    self.class_names = workdir_lib.class_names(self.config, workdir)

  def _labels(self, label, n: int) -> np.ndarray | None:
    """n labels: label (an int, or a sequence of ints gone through in turn) checked against
    the run's classes; a conditional run's classes in turn where label is None."""
    if label is None:
      return None  # generate_images draws a conditional G's classes evenly
    asked = sampling.check_labels([label] if np.ndim(label) == 0 else list(label),
                                  self.class_names, "label")
    return np.resize(np.asarray(asked, np.int32), n)

  def generate(self, n: int, seed: int = 0, batch_size: int = 64,
               bn_mode: str | None = None, label=None) -> np.ndarray:
    """Generates n images of a seed as uint8 (n, S, S, C): those of `--mode sample
    --sample_seed seed --grid_size batch_size --num_images n`. A conditional run draws class
    `label` (an index of class_names; a list: its classes in turn; None: every class in
    turn)."""
    sampling.check_range("n", n, 1, sampling.MAX_SINGLE_IMAGES)
    sampling.check_range("seed", seed, 0, sampling.MAX_SEED)
    sampling.check_range("batch_size", batch_size, 1, sampling.MAX_GRID_SIZE)
    bn_mode = sampling.resolve_bn_mode(bn_mode, self.config.sample_bn_mode)
    labels = self._labels(label, n)
    if self.gan.num_classes:  # the singles of --mode sample: their own latents
      z = sampling.fixed_noise(seed, n, self.config.nz, sampling.SAMPLE_SALT)
      if labels is None:
        labels = np.resize(np.arange(self.gan.num_classes, dtype=np.int32), n)
      return sampling.generate_images(self.gan, self.state, z, batch_size, bn_mode, self.ema,
                                      labels)
    z = sampling.fixed_noise(seed, max(n, batch_size), self.config.nz, sampling.SAMPLE_SALT)
    return sampling.generate_images(self.gan, self.state, z, batch_size, bn_mode, self.ema)[:n]

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

def load(workdir: str, checkpoint: str = "latest", ema: bool = False) -> Run:
  """Loads a run's latest or best checkpoint (G's EMA with ema=True) for generating and
  evaluating images."""
  return Run(workdir, checkpoint, ema)
