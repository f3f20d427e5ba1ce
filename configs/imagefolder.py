"""`--config configs/imagefolder.py` from a clone: the preset dcgan_jax/configs/imagefolder.py (`--config imagefolder`)."""

from dcgan_jax.configs.imagefolder import get_config  # noqa: F401
