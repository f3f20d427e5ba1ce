"""`--config configs/celeba.py` from a clone: the preset dcgan_jax/configs/celeba.py (`--config celeba`)."""

from dcgan_jax.configs.celeba import get_config  # noqa: F401
