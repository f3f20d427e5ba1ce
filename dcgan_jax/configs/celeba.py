"""CelebA at 64x64 with the PyTorch DCGAN tutorial's settings.

Reads tfds 'celeb_a' (prepared in array_record format). For a folder of images
such as the img_align_celeba extract:
  --config.dataset=imagefolder --config.data_dir=/path/to/img_align_celeba
"""

from dcgan_jax.configs import default


def get_config():
  config = default.papers_dcgan(default.get_config())
  config.dataset = "tfds:celeb_a"
  config.image_size = 64
  config.channels = 3
  config.ngf = 64
  config.ndf = 64
  config.batch_size = 128
  config.num_train_steps = -1
  config.num_epochs = 5.0
  config.seed = 999
  config.log_every_steps = 50
  config.sample_every_steps = 500
  config.checkpoint_every_steps = 1000
  # FID needs the Inception weights (README): --config.evaluator=inception
  # --config.inception_weights=/path/to/pt_inception-2015-12-05-6726825d.pth
  config.evaluator = ""
  config.eval_every_steps = 2000
  return config
