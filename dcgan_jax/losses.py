"""GAN losses on D's raw outputs (logits, or a critic's scores), and the gradient penalties.

Each loss is a pair: D's loss (which D minimises) and G's loss (which G minimises).
- 'bce': the paper's and tutorial's non-saturating loss, BCE on logits (nn.BCELoss, stable).
- 'hinge': D max(0, 1 - D(x)) + max(0, 1 + D(G(z))), G -D(G(z)) (Lim & Ye 2017; Miyato et al.
  2018).
- 'lsgan': least squares with targets a=0, b=c=1 (Mao et al. 2017): D (D(x) - 1)^2 / 2 +
  D(G(z))^2 / 2, G (D(G(z)) - 1)^2 / 2.
- 'wgan_gp': Wasserstein (Gulrajani et al. 2017): D D(G(z)) - D(x), G -D(G(z)), with
  `gradient_penalty` added to D's loss.
All are means over the batch.
"""

from typing import Callable

import jax
import jax.numpy as jnp

LOSSES = ("bce", "hinge", "lsgan", "wgan_gp")


def bce_with_logits(logits: jax.Array, labels: jax.Array | float) -> jax.Array:
  """Computes the mean of -[y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))], stable for any x."""
  # softplus(x) - x*y == -y log s(x) - (1-y) log(1 - s(x)), without overflow.
  return jnp.mean(jax.nn.softplus(logits) - logits * labels)


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array,
                       label_smoothing: float = 0.0, kind: str = "bce") -> jax.Array:
  """Computes D's loss of a kind; for 'bce', errD = BCE(D(x), 1 - smoothing) + BCE(D(G(z)), 0).

  Label smoothing is one-sided (Salimans et al. 2016): only real targets move ('bce' and
  'lsgan'; the margin losses have no target to smooth).
  """
  if kind == "bce":
    return (bce_with_logits(real_logits, 1.0 - label_smoothing)
            + bce_with_logits(fake_logits, 0.0))
  if kind == "hinge":
    return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))
  if kind == "lsgan":
    return 0.5 * (jnp.mean(jnp.square(real_logits - (1.0 - label_smoothing)))
                  + jnp.mean(jnp.square(fake_logits)))
  if kind == "wgan_gp":
    return jnp.mean(fake_logits) - jnp.mean(real_logits)
  raise ValueError(f"loss {kind!r} is not one of {', '.join(LOSSES)}")


def generator_loss(fake_logits: jax.Array, kind: str = "bce") -> jax.Array:
  """Computes G's loss of a kind; for 'bce', errG = BCE(D(G(z)), 1), the non-saturating loss."""
  if kind == "bce":
    return bce_with_logits(fake_logits, 1.0)
  if kind in ("hinge", "wgan_gp"):
    return -jnp.mean(fake_logits)
  if kind == "lsgan":
    return 0.5 * jnp.mean(jnp.square(fake_logits - 1.0))
  raise ValueError(f"loss {kind!r} is not one of {', '.join(LOSSES)}")


def input_gradients(d_fn: Callable[[jax.Array], tuple[jax.Array, object]], x_BxSxSxC: jax.Array
                    ) -> tuple[jax.Array, jax.Array, object]:
  """Returns (d sum(D(x)) / dx per image (B, S, S, C), D(x) (B,), d_fn's aux) in one pass; with
  BatchNorm in train mode the images of a batch interact, and the gradient includes that."""
  def total(x):
    out, aux = d_fn(x)
    return jnp.sum(out), (out, aux)

  grads, (out, aux) = jax.grad(total, has_aux=True)(x_BxSxSxC)
  return grads, out, aux


def squared_norms(grads_BxSxSxC: jax.Array) -> jax.Array:
  """Returns ||g||^2 of each image's gradient, (B,)."""
  return jnp.sum(jnp.square(grads_BxSxSxC.reshape(grads_BxSxSxC.shape[0], -1)), axis=1)


def r1_penalty(grads_BxSxSxC: jax.Array) -> jax.Array:
  """R1 (Mescheder et al. 2018) without its weight: E ||grad_x D(x)||^2 / 2 on real images."""
  return 0.5 * jnp.mean(squared_norms(grads_BxSxSxC))


def gradient_penalty(grads_BxSxSxC: jax.Array) -> jax.Array:
  """WGAN-GP's penalty without its weight: E (||grad D(x_hat)|| - 1)^2, the gradient taken at
  x_hat = a x + (1 - a) G(z), a ~ U[0, 1] per image (see `interpolate`)."""
  # sqrt(0) has no gradient: a zero gradient's norm is taken as 0 with a finite derivative.
  sq = squared_norms(grads_BxSxSxC)
  norms = jnp.sqrt(jnp.where(sq > 0, sq, 1.0)) * (sq > 0)
  return jnp.mean(jnp.square(norms - 1.0))


def interpolate(key: jax.Array, real_BxSxSxC: jax.Array, fake_BxSxSxC: jax.Array) -> jax.Array:
  """Returns a x + (1 - a) G(z), a ~ U[0, 1] drawn per image."""
  a_B = jax.random.uniform(key, (real_BxSxSxC.shape[0],) + (1,) * (real_BxSxSxC.ndim - 1))
  return a_B * real_BxSxSxC + (1.0 - a_B) * fake_BxSxSxC
