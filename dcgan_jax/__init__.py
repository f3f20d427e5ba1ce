"""dcgan-jax: DCGAN (Radford et al., 2015) in JAX and Flax.

The public API (dcgan_jax/api.py), loaded on first use so that `import dcgan_jax.convert` and
the other modules stay light:

  get_config(preset="default", **overrides) -> ConfigDict   a preset, checked as main.py checks
  fit(config, workdir) -> Run                                 the run `python main.py` makes
  load(workdir, checkpoint="latest", ema=None) -> Run         generate, interpolate, evaluate
                                                              (G's EMA where the run keeps one)
"""

__version__ = "0.1.0"
__all__ = ["get_config", "fit", "load", "Run", "PRESETS"]


def __getattr__(name: str):
  if name in __all__:
    from dcgan_jax import api  # pylint: disable=g-import-not-at-top
    return getattr(api, name)
  raise AttributeError(f"module 'dcgan_jax' has no attribute {name!r}")
