"""DiffAugment: shapes and ranges kept, each policy's effect by hand, differentiable, fixed by its
key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcgan_jax import augment

KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def images():
  return jax.random.uniform(jax.random.PRNGKey(1), (16, 32, 32, 3), minval=-1.0, maxval=1.0)


@pytest.mark.parametrize("policy", ["color", "translation", "cutout",
                                    "color,translation,cutout"])
def test_shapes_ranges_and_keys(images, policy):
  policies = augment.parse(policy)
  out = augment.apply(policies, KEY, images)
  assert out.shape == images.shape and out.dtype == images.dtype
  assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0
  assert not np.allclose(out, images)
  np.testing.assert_array_equal(out, augment.apply(policies, KEY, images))  # the key fixes it
  assert not np.allclose(out, augment.apply(policies, jax.random.PRNGKey(7), images))


@pytest.mark.parametrize("policy", ["color", "translation", "cutout",
                                    "color,translation,cutout"])
def test_differentiable(images, policy):
  """The gradient of a weighted sum of the output is finite and reaches the input; for the
  linear policies it equals their transpose applied to the weights (a vjp by hand)."""
  weights = jax.random.normal(jax.random.PRNGKey(2), images.shape)
  policies = augment.parse(policy)
  grad = jax.grad(lambda x: jnp.sum(augment.apply(policies, KEY, x) * weights))(images)
  assert np.all(np.isfinite(grad)) and float(jnp.abs(grad).sum()) > 0
  if policy == "cutout":  # x * mask: the gradient is weights * mask
    mask = augment.apply(policies, KEY, jnp.ones_like(images))
    np.testing.assert_allclose(grad, weights * mask, atol=1e-6)


def test_translation_shifts_whole_images_with_zero_fill():
  x = jnp.arange(1, 2 * 32 * 32 + 1, dtype=jnp.float32).reshape(2, 32, 32, 1)
  out = np.asarray(augment.translation(KEY, x))
  for i in range(2):
    found = []
    for dy in range(-4, 5):  # at most 32 / 8 = 4 pixels
      for dx in range(-4, 5):
        expected = np.zeros((32, 32))
        src = np.asarray(x[i, :, :, 0])
        ys, xs = slice(max(dy, 0), 32 + min(dy, 0)), slice(max(dx, 0), 32 + min(dx, 0))
        expected[ys, xs] = src[max(-dy, 0):32 - max(dy, 0), max(-dx, 0):32 - max(dx, 0)]
        if np.array_equal(out[i, :, :, 0], expected):
          found.append((dy, dx))
    assert len(found) == 1, found


def test_translation_covers_every_offset_in_range():
  x = jnp.zeros((512, 32, 32, 1)).at[:, 16, 16, 0].set(1.0)  # one bright pixel
  out = np.asarray(augment.translation(KEY, x))
  ys, xs = np.nonzero(out[:, :, :, 0])[1:]
  assert set(ys - 16) == set(range(-4, 5)) and set(xs - 16) == set(range(-4, 5))


def test_cutout_zeroes_one_square_of_half_the_side_at_most():
  out = np.asarray(augment.cutout(KEY, jnp.ones((256, 32, 32, 1))))
  zeros = out[:, :, :, 0] == 0
  assert set(np.unique(out)) <= {0.0, 1.0}
  for z in zeros:
    rows, cols = np.nonzero(z.any(1))[0], np.nonzero(z.any(0))[0]
    assert z.sum() == len(rows) * len(cols)  # a rectangle (a square clipped at the border)
    assert 1 <= len(rows) <= 16 and 1 <= len(cols) <= 16
  assert (zeros.sum((1, 2)) == 256).mean() > 0.1  # whole 16x16 squares inside the image too


def test_color_of_a_grey_image_by_hand():
  """Brightness b, saturation (no change: one channel) and contrast c about the mean m:
  (x + b - m') * c + m' with m' the mean after brightness, clipped; draws as color() makes them."""
  x = jax.random.uniform(jax.random.PRNGKey(3), (4, 32, 32, 1), minval=-0.4, maxval=0.4)
  kb, _, kc = jax.random.split(KEY, 3)
  b = np.asarray(jax.random.uniform(kb, (4, 1, 1, 1), minval=-0.5, maxval=0.5))
  c = np.asarray(jax.random.uniform(kc, (4, 1, 1, 1), minval=0.5, maxval=1.5))
  bright = np.asarray(x) + b
  mean = bright.mean(axis=(1, 2, 3), keepdims=True)
  expected = np.clip((bright - mean) * c + mean, -1, 1)
  np.testing.assert_allclose(augment.color(KEY, x), expected, atol=1e-6)


def test_unknown_policy_is_named():
  with pytest.raises(ValueError, match="'zoom'"):
    augment.parse("color,zoom")
  assert augment.parse("") == () and augment.parse(" color , cutout ") == ("color", "cutout")
