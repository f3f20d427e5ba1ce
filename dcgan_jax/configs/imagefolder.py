"""Any folder of images (searched recursively) with the CelebA preset's 64x64 RGB settings.

Set --config.data_dir to the folder.
"""

from dcgan_jax.configs import celeba


def get_config():
  config = celeba.get_config()
  config.dataset = "imagefolder"
  config.data_dir = ""  # required: the folder of images
  return config
