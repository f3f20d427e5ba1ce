"""Binary cross-entropy GAN losses on logits (the tutorial's nn.BCELoss, stable)."""

import jax
import jax.numpy as jnp


def bce_with_logits(logits: jax.Array, labels: jax.Array | float) -> jax.Array:
  """Computes the mean of -[y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))], stable for any x."""
  # softplus(x) - x*y == -y log s(x) - (1-y) log(1 - s(x)), without overflow.
  return jnp.mean(jax.nn.softplus(logits) - logits * labels)


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array,
                       label_smoothing: float = 0.0) -> jax.Array:
  """Computes errD = BCE(D(x), 1 - smoothing) + BCE(D(G(z)), 0).

  Label smoothing is one-sided (Salimans et al. 2016): only real targets move.
  """
  return (bce_with_logits(real_logits, 1.0 - label_smoothing)
          + bce_with_logits(fake_logits, 0.0))


def generator_loss(fake_logits: jax.Array) -> jax.Array:
  """Computes errG = BCE(D(G(z)), 1): the non-saturating generator loss."""
  return bce_with_logits(fake_logits, 1.0)
