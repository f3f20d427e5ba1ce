"""CIFAR-10 (50,000 images) from tensorflow-datasets at 32x32, RGB."""

from dcgan_jax.configs import default


def get_config():
  config = default.papers_dcgan(default.get_config())
  config.dataset = "tfds:cifar10"
  config.channels = 3
  config.ngf = 64
  config.ndf = 64
  config.batch_size = 64
  config.num_train_steps = 100_000
  config.sample_every_steps = 2000
  config.checkpoint_every_steps = 2000
  # FID needs the Inception weights (README): --config.evaluator=inception
  # --config.inception_weights=/path/to/pt_inception-2015-12-05-6726825d.pth
  config.evaluator = ""
  config.eval_every_steps = 2000
  return config
