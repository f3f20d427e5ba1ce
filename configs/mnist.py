"""MNIST (60,000 digits) from tensorflow-datasets at 32x32, grayscale."""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = "tfds:mnist"
  config.ngf = 64
  config.ndf = 64
  config.batch_size = 128
  # The paper's DCGAN, as the tutorial trains it: the embedded default's R1 and EMA of G are
  # measured on its digits only (--config.r1_weight=1.0 --config.g_ema_decay=0.999 add them).
  config.r1_weight = 0.0
  config.g_ema_decay = 0.0
  config.num_train_steps = -1
  config.num_epochs = 5.0
  config.sample_every_steps = 1000
  config.checkpoint_every_steps = 1000
  config.eval_every_steps = 1000  # the digit classifier (default evaluator)
  return config
