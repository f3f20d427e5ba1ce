"""R1 and WGAN-GP's gradient penalties on a real discriminator, in float64, against central
finite differences of D's output."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcgan_jax import losses
from dcgan_jax.models import Discriminator

pytestmark = pytest.mark.slow  # finite differences over every pixel, in float64


def _fd_gradients(d_fn, x_BxSxSxC: np.ndarray, eps: float = 1e-5) -> np.ndarray:
  """d sum(D(x)) / dx by central differences, every pixel of every image (float64)."""
  flat = x_BxSxSxC.reshape(-1)
  n = flat.size
  grads = np.empty(n)
  eye_rows = 512
  for start in range(0, n, eye_rows):  # a batch of perturbed copies of the whole batch per call
    idx = np.arange(start, min(n, start + eye_rows))
    bump = np.zeros((len(idx), n))
    bump[np.arange(len(idx)), idx] = eps
    plus = (flat[None] + bump).reshape((-1,) + x_BxSxSxC.shape[1:])
    minus = (flat[None] - bump).reshape((-1,) + x_BxSxSxC.shape[1:])
    out_plus = np.asarray(d_fn(plus)).reshape(len(idx), -1).sum(1)
    out_minus = np.asarray(d_fn(minus)).reshape(len(idx), -1).sum(1)
    grads[idx] = (out_plus - out_minus) / (2 * eps)
  return grads.reshape(x_BxSxSxC.shape)


@pytest.fixture(scope="module")
def critic():
  """A float64 critic with LayerNorm (each image's output depends on that image only, so every
  perturbed copy can share one batch) and its function of images."""
  with jax.enable_x64(True):
    d = Discriminator(32, ndf=4, dtype="float64", norm="layer")
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 1), jnp.float64, -1, 1)
    params = d.init(jax.random.PRNGKey(0), x, train=False)["params"]
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    apply = jax.jit(lambda images: d.apply({"params": params}, images, train=True))
    yield apply, np.asarray(x), np.asarray(
        jax.random.uniform(jax.random.PRNGKey(2), (2, 32, 32, 1), jnp.float64, -1, 1))


def test_r1_penalty_against_finite_differences(critic):
  apply, real, _ = critic
  with jax.enable_x64(True):
    grads, out, aux = losses.input_gradients(lambda x: (apply(x), None), jnp.asarray(real))
    fd = _fd_gradients(apply, real)
    assert out.shape == (2,) and aux is None
    assert np.abs(fd).max() > 1e-3  # a gradient worth comparing
    np.testing.assert_allclose(np.asarray(grads), fd, rtol=1e-5, atol=1e-9)
    expected = 0.5 * np.mean(np.sum(fd.reshape(2, -1) ** 2, axis=1))
    assert float(losses.r1_penalty(grads)) == pytest.approx(expected, rel=1e-6)


def test_gradient_penalty_at_interpolates_against_finite_differences(critic):
  apply, real, fake = critic
  with jax.enable_x64(True):
    mixed = losses.interpolate(jax.random.PRNGKey(3), jnp.asarray(real), jnp.asarray(fake))
    grads, _, _ = losses.input_gradients(lambda x: (apply(x), None), mixed)
    fd = _fd_gradients(apply, np.asarray(mixed))
    norms = np.sqrt(np.sum(fd.reshape(2, -1) ** 2, axis=1))
    assert float(losses.gradient_penalty(grads)) == pytest.approx(
        np.mean((norms - 1) ** 2), rel=1e-6)


def test_penalty_gradients_reach_the_critic_parameters():
  """Double backpropagation: the penalty is differentiable in D's parameters (what R1 and the
  GP train), compared with finite differences along a random direction."""
  with jax.enable_x64(True):
    d = Discriminator(32, ndf=4, dtype="float64", norm="layer")
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 1), jnp.float64, -1, 1)
    params = jax.tree.map(lambda p: p.astype(jnp.float64),
                          d.init(jax.random.PRNGKey(0), x, train=False)["params"])

    def penalty(p):
      grads, _, _ = losses.input_gradients(
          lambda images: (d.apply({"params": p}, images, train=True), None), x)
      return losses.r1_penalty(grads)

    direction = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(5), p.shape,
                                                         jnp.float64), params)
    analytic = sum(jnp.vdot(g, v) for g, v in zip(jax.tree.leaves(jax.grad(penalty)(params)),
                                                   jax.tree.leaves(direction)))
    # D's input gradient jumps where a leaky ReLU's input crosses 0: a step small enough to
    # cross none (float64 keeps the difference exact enough).
    eps = 1e-7
    shifted = functools.partial(jax.tree.map, lambda p, v, s: p + s * eps * v)
    numeric = (penalty(shifted(params, direction, jax.tree.map(lambda _: 1.0, params)))
               - penalty(shifted(params, direction, jax.tree.map(lambda _: -1.0, params)))
               ) / (2 * eps)
    assert abs(float(analytic)) > 1e-3
    assert float(analytic) == pytest.approx(float(numeric), rel=1e-6)
