"""`--config configs/mnist.py` from a clone: the preset dcgan_jax/configs/mnist.py (`--config mnist`)."""

from dcgan_jax.configs.mnist import get_config  # noqa: F401
