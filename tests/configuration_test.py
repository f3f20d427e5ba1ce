"""Config validation: each bad value gets a UsageError that names it."""

import pytest

from dcgan_jax.configs import celeba, cifar10, default, imagefolder, mnist
from dcgan_jax import configuration
from dcgan_jax.errors import UsageError


@pytest.mark.parametrize("module", [default, celeba, mnist, cifar10, imagefolder])
def test_presets_are_valid(module):
  configuration.validate(module.get_config())


def test_celeba_has_the_tutorial_settings():
  c = celeba.get_config()
  assert (c.image_size, c.channels, c.batch_size, c.num_epochs, c.seed) == (64, 3, 128, 5.0, 999)
  assert (c.nz, c.ngf, c.ndf, c.g_learning_rate, c.adam_b1) == (100, 64, 64, 2e-4, 0.5)
  assert c.dataset == "tfds:celeb_a"


@pytest.mark.parametrize("module", [celeba, mnist, cifar10, imagefolder])
def test_presets_train_the_papers_dcgan(module):
  """The embedded default adds R1 and G's EMA (measured on its digits); the presets do not."""
  c = module.get_config()
  assert (c.loss, c.r1_weight, c.g_ema_decay, c.spectral_norm, c.diffaugment) == (
      "bce", 0.0, 0.0, False, "")


def test_embedded_default_is_dcgan_with_r1_and_ema():
  c = default.get_config()
  assert (c.loss, c.g_learning_rate, c.d_learning_rate, c.adam_b1) == ("bce", 2e-4, 2e-4, 0.5)
  assert (c.r1_weight, c.g_ema_decay, c.num_train_steps) == (1.0, 0.999, 7800)


@pytest.mark.parametrize("field,value,message", [
    ("image_size", 48, "config.image_size=48 is not supported"),
    ("channels", 2, "config.channels=2"),
    ("dataset", "cifar", "config.dataset='cifar'"),
    ("dataset", "tfds:", "config.dataset='tfds:'"),
    ("dataset", "tfds:no_such_dataset", "config.dataset='tfds:no_such_dataset'"),
    ("batch_size", 0, "config.batch_size=0"),
    ("num_train_steps", 0, "config.num_train_steps=0"),
    ("adam_b1", 1.0, "config.adam_b1=1.0"),
    ("label_smoothing", -0.1, "config.label_smoothing=-0.1"),
    ("g_learning_rate", 0.0, "config.g_learning_rate=0.0"),
    ("upconv_impl", "fft", "config.upconv_impl='fft'"),
    ("sample_bn_mode", "test", "config.sample_bn_mode='test'"),
    ("downconv_impl", "phase", "config.downconv_impl='phase'"),
    ("compute_dtype", "float16", "config.compute_dtype='float16'"),
    ("steps_per_dispatch", 0, "config.steps_per_dispatch=0"),
    ("prefetch_batches", 0, "config.prefetch_batches=0"),
    ("decode_workers", -1, "config.decode_workers=-1"),
])
def test_bad_values_are_named(field, value, message):
  config = default.get_config()
  config[field] = value
  with pytest.raises(UsageError) as e:
    configuration.validate(config)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_epochs_need_to_be_positive_when_steps_are_minus_one():
  config = default.get_config()
  config.num_train_steps = -1
  with pytest.raises(UsageError, match="config.num_epochs=-1.0"):
    configuration.validate(config)


def test_total_steps():
  config = default.get_config()
  assert configuration.total_steps(config, 5000) == 7800
  config.num_train_steps, config.num_epochs, config.batch_size = -1, 2.5, 64
  assert configuration.total_steps(config, 5000) == 195  # 78 full batches per epoch


@pytest.mark.parametrize("changes,message", [
    ({"evaluator": "fid"}, "config.evaluator='fid'"),
    ({"evaluator": "classifier", "channels": 3}, "measures 1-channel digits"),
    ({"evaluator": "inception"}, "config.inception_weights='' is needed"),
    ({"eval_every_steps": -1}, "config.eval_every_steps=-1"),
    ({"eval_num_samples": 5}, "config.eval_num_samples=5"),
    ({"g_ema_decay": 1.0}, "config.g_ema_decay=1.0"),
    ({"best_metric": "ema_classifier_fid", "g_ema_decay": 0.0},
     "config.best_metric='ema_classifier_fid'"),
    ({"best_metric": "fid"}, "config.best_metric='fid' is not one of auto, classifier_fid"),
])
def test_bad_evaluation_settings_are_named(changes, message):
  config = default.get_config()
  for field, value in changes.items():
    config[field] = value
  with pytest.raises(UsageError) as e:
    configuration.validate(config)
  assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("field", sorted(configuration.INT_BOUNDS))
def test_every_bounded_field_takes_its_bound_and_refuses_one_more(field):
  config = default.get_config()
  config[field] = configuration.INT_BOUNDS[field]
  configuration.validate(config)
  config[field] += 1
  with pytest.raises(UsageError, match=f"config.{field}={config[field]} is too large"):
    configuration.validate(config)


@pytest.mark.parametrize("field,value", [("g_learning_rate", float("inf")),
                                         ("d_learning_rate", float("nan")),
                                         ("adam_eps", float("inf"))])
def test_learning_rates_must_be_finite(field, value):
  config = default.get_config()
  config[field] = value
  with pytest.raises(UsageError, match=f"config.{field}={value} must be positive and finite"):
    configuration.validate(config)


def test_steps_from_epochs_fit_the_step_counter():
  config = default.get_config()
  config.num_train_steps, config.num_epochs = -1, 1e9
  with pytest.raises(UsageError, match="config.num_epochs=1000000000.0 makes 78,000,000,000 "
                     "steps of 5,000 images; at most 2,147,483,647"):
    configuration.total_steps(config, 5000)
  config.num_epochs = 2.0
  assert configuration.total_steps(config, 5000) == 156


def test_cache_dir_must_be_makeable(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  config = default.get_config()
  config.cache_dir = str(blocker / "cache")
  with pytest.raises(UsageError, match="is not a folder that exists or can be made here"):
    configuration.validate(config)
  config.cache_dir = str(tmp_path / "new" / "cache")  # made when the cache is built
  configuration.validate(config)
