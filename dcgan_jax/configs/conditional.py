"""The embedded default made class-conditional: G draws the digit it is given (R1 and G's EMA,
as the default)."""

from dcgan_jax.configs import default


def get_config():
  config = default.get_config()
  config.conditional = True
  return config
