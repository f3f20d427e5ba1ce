"""`--config configs/default.py` from a clone: the preset dcgan_jax/configs/default.py (`--config default`)."""

from dcgan_jax.configs.default import get_config, papers_dcgan  # noqa: F401
