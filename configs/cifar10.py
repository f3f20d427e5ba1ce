"""`--config configs/cifar10.py` from a clone: the preset dcgan_jax/configs/cifar10.py (`--config cifar10`)."""

from dcgan_jax.configs.cifar10 import get_config  # noqa: F401
