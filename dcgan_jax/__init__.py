"""dcgan-jax: DCGAN (Radford et al., 2015) in JAX and Flax."""

__version__ = "0.1.0"
