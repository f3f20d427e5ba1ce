"""Adam with bias corrections accurate in float32.

`optax.adam` computes the bias correction `1 - b2**t` in the moments' dtype. In float32,
b2 = 0.999 is 0.99900001, and the subtraction keeps five digits: at t = 1 the correction is
off by 1.3e-5, which shrinks every component of Adam's first update by 6.4e-6 (relative), a
systematic error that PyTorch's Adam (corrections in Python's float64) does not make. In a GAN
that is enough to change which near-zero gradient components flip sign (benchmarks/NOTES.md,
"Float32 drift"). Here the corrections are `-expm1(t * log(b))`, accurate to a rounding; all
else is optax's `scale_by_adam` (moments, their update order, eps outside the square root) and
the state is optax's `ScaleByAdamState`, so checkpoints are unchanged.
"""

import math

import jax
import jax.numpy as jnp
import optax


def _bias_correction(decay: float, count: jax.Array, dtype) -> jax.Array:
  """1 - decay**count, computed as -expm1(count * log(decay)) in dtype (1 when decay is 0)."""
  if decay == 0:
    return jnp.ones((), dtype)
  return -jnp.expm1(count.astype(dtype) * jnp.asarray(math.log(decay), dtype))


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
                  ) -> optax.GradientTransformation:
  """optax.scale_by_adam with accurate bias corrections (module docstring)."""

  def init_fn(params):
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32),
                                  mu=optax.tree.zeros_like(params),
                                  nu=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count = optax.safe_increment(state.count)

    def direction(m, v):
      m_hat = m / _bias_correction(b1, count, m.dtype)
      v_hat = v / _bias_correction(b2, count, v.dtype)
      return m_hat / (jnp.sqrt(v_hat) + eps)

    return jax.tree.map(direction, mu, nu), optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def adam(learning_rate: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
         ) -> optax.GradientTransformation:
  """Adam as optax.adam (same state pytree), with scale_by_adam's accurate bias corrections."""
  return optax.chain(scale_by_adam(b1, b2, eps), optax.scale_by_learning_rate(learning_rate))
