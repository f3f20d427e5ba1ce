"""`--config configs/conditional.py` from a clone: the preset dcgan_jax/configs/conditional.py (`--config conditional`)."""

from dcgan_jax.configs.conditional import get_config  # noqa: F401
