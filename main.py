"""Trains DCGAN, or samples, evaluates or serves a trained run (dcgan_jax/cli.py; --help)."""

from dcgan_jax import cli

if __name__ == "__main__":
  cli.run()
