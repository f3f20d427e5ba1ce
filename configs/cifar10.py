"""CIFAR-10 (50,000 images) from tensorflow-datasets at 32x32, RGB."""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = "tfds:cifar10"
  config.channels = 3
  config.ngf = 64
  config.ndf = 64
  config.batch_size = 64
  # The paper's DCGAN, as the tutorial trains it: the embedded default's R1 and EMA of G are
  # measured on its digits only (--config.r1_weight=1.0 --config.g_ema_decay=0.999 add them).
  config.r1_weight = 0.0
  config.g_ema_decay = 0.0
  config.num_train_steps = 100_000
  config.sample_every_steps = 2000
  config.checkpoint_every_steps = 2000
  # FID needs the Inception weights (README): --config.evaluator=inception
  # --config.inception_weights=/path/to/pt_inception-2015-12-05-6726825d.pth
  config.evaluator = ""
  config.eval_every_steps = 2000
  return config
