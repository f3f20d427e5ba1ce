"""Adam with accurate bias corrections: optax's Adam in exact arithmetic, its state pytree, and a
float32 first update that is lr * sign(g) to a rounding."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dcgan_jax import optim


def _grads(seed: int, dtype) -> dict:
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.standard_normal((5, 3)), dtype), "b": jnp.asarray(
      rng.standard_normal(3) * 1e-3, dtype)}


def test_equals_optax_adam_in_float64():
  with jax.enable_x64(True):
    params = _grads(0, jnp.float64)
    for b1 in (0.5, 0.0, 0.9):
      ours, theirs = optim.adam(2e-4, b1, 0.999), optax.adam(2e-4, b1=b1, b2=0.999)
      s_ours, s_theirs = ours.init(params), theirs.init(params)
      assert jax.tree.structure(s_ours) == jax.tree.structure(s_theirs)
      for step in range(5):
        grads = _grads(step + 1, jnp.float64)
        u_ours, s_ours = ours.update(grads, s_ours, params)
        u_theirs, s_theirs = theirs.update(grads, s_theirs, params)
        for a, b in zip(jax.tree.leaves(u_ours), jax.tree.leaves(u_theirs)):
          np.testing.assert_allclose(a, b, rtol=1e-12, err_msg=f"b1={b1} step {step}")
      for a, b in zip(jax.tree.leaves(s_ours), jax.tree.leaves(s_theirs)):
        np.testing.assert_array_equal(a, b)


def test_first_float32_update_is_lr_times_the_sign():
  params, grads = _grads(0, jnp.float32), _grads(1, jnp.float32)
  lr = 2e-4
  updates, state = optim.adam(lr, 0.5, 0.999).update(grads, optim.adam(lr, 0.5).init(params),
                                                      params)
  for g, u in zip(jax.tree.leaves(grads), jax.tree.leaves(updates)):
    g = np.asarray(g, np.float64)
    exact = -lr * g / (np.abs(g) + 1e-8)
    np.testing.assert_allclose(u, exact, rtol=3e-7)
  # optax's float32 correction 1 - 0.999**1 is 1.3e-5 off: its first update is 6.4e-6 short.
  theirs, _ = optax.adam(lr, b1=0.5).update(grads, optax.adam(lr, b1=0.5).init(params), params)
  w = np.asarray(grads["w"], np.float64)
  shortfall = 1 - np.asarray(theirs["w"]) / (-lr * w / (np.abs(w) + 1e-8))
  assert np.all(np.abs(shortfall - 6.4e-6) < 1e-6)
  assert int(state[0].count) == 1
