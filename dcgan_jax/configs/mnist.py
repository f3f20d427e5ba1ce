"""MNIST (60,000 digits) from tensorflow-datasets at 32x32, grayscale."""

from dcgan_jax.configs import default


def get_config():
  config = default.papers_dcgan(default.get_config())
  config.dataset = "tfds:mnist"
  config.ngf = 64
  config.ndf = 64
  config.batch_size = 128
  config.num_train_steps = -1
  config.num_epochs = 5.0
  config.sample_every_steps = 1000
  config.checkpoint_every_steps = 1000
  config.eval_every_steps = 1000  # the digit classifier (default evaluator)
  return config
