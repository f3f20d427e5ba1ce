"""Loss values against numbers computed by hand."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from dcgan_jax import losses


def test_bce_at_zero_logit_is_log2():
  assert float(losses.bce_with_logits(jnp.zeros(4), 1.0)) == pytest.approx(math.log(2), abs=1e-7)


def test_bce_hand_computed():
  # -log(sigmoid(2)) = log(1 + e^-2) = 0.126928; -log(sigmoid(-1)) = log(1 + e) = 1.313262
  got = float(losses.bce_with_logits(jnp.array([2.0, -1.0]), 1.0))
  assert got == pytest.approx((0.1269280110429725 + 1.3132616875182228) / 2, abs=1e-6)


def test_bce_stable_at_extreme_logits():
  assert float(losses.bce_with_logits(jnp.array([100.0]), 0.0)) == pytest.approx(100.0)
  assert float(losses.bce_with_logits(jnp.array([-100.0]), 1.0)) == pytest.approx(100.0)
  assert float(losses.bce_with_logits(jnp.array([100.0]), 1.0)) == pytest.approx(0.0, abs=1e-30)


def test_discriminator_loss_hand_computed():
  # real logit 2, fake logit -1: log(1+e^-2) + log(1+e^-1) = 0.126928 + 0.313262
  got = float(losses.discriminator_loss(jnp.array([2.0]), jnp.array([-1.0])))
  assert got == pytest.approx(0.1269280110429725 + 0.31326168751822286, abs=1e-6)


def test_discriminator_loss_one_sided_label_smoothing():
  # real target 0.9: 0.9 * log(1+e^-2) + 0.1 * log(1+e^2) = 0.114235 + 0.212693; fake target stays 0
  got = float(losses.discriminator_loss(jnp.array([2.0]), jnp.array([-1.0]), 0.1))
  expected = 0.9 * 0.1269280110429725 + 0.1 * 2.1269280110429727 + 0.31326168751822286
  assert got == pytest.approx(expected, abs=1e-6)


def test_generator_loss_hand_computed():
  # fake logits 0 and 1: (log 2 + log(1 + e^-1)) / 2
  got = float(losses.generator_loss(jnp.array([0.0, 1.0])))
  assert got == pytest.approx((math.log(2) + 0.31326168751822286) / 2, abs=1e-6)


def test_bce_matches_probability_form():
  x = np.linspace(-5, 5, 11)
  p = 1 / (1 + np.exp(-x))
  expected = np.mean(-(0.7 * np.log(p) + 0.3 * np.log(1 - p)))
  assert float(losses.bce_with_logits(jnp.asarray(x), 0.7)) == pytest.approx(expected, rel=1e-5)


# The variants' losses on real logits [2, 0.5] and fake logits [-2, 0.5], by hand.
REAL, FAKE = jnp.array([2.0, 0.5]), jnp.array([-2.0, 0.5])


@pytest.mark.parametrize("kind,d_loss,g_loss", [
    # D: (relu(1 - 2) + relu(1 - 0.5)) / 2 + (relu(1 - 2) + relu(1 + 0.5)) / 2 = 0.25 + 0.75
    # G: -(-2 + 0.5) / 2
    ("hinge", 1.0, 0.75),
    # D: ((2 - 1)^2 + (0.5 - 1)^2) / 4 + ((-2)^2 + 0.5^2) / 4 = 0.3125 + 1.0625
    # G: ((-2 - 1)^2 + (0.5 - 1)^2) / 4 = (9 + 0.25) / 4
    ("lsgan", 1.375, 2.3125),
    # D: mean(fake) - mean(real) = -0.75 - 1.25; G: -mean(fake)
    ("wgan_gp", -2.0, 0.75),
])
def test_variant_losses_hand_computed(kind, d_loss, g_loss):
  assert float(losses.discriminator_loss(REAL, FAKE, 0.0, kind)) == pytest.approx(d_loss, abs=1e-6)
  assert float(losses.generator_loss(FAKE, kind)) == pytest.approx(g_loss, abs=1e-6)


def test_bce_is_the_default_kind():
  assert float(losses.discriminator_loss(REAL, FAKE, 0.1, "bce")) == float(
      losses.discriminator_loss(REAL, FAKE, 0.1))
  assert float(losses.generator_loss(FAKE, "bce")) == float(losses.generator_loss(FAKE))


def test_lsgan_label_smoothing_moves_the_real_target():
  # real target 0.9: ((2 - 0.9)^2 + (0.5 - 0.9)^2) / 4 = (1.21 + 0.16) / 4; fake part 1.0625
  got = float(losses.discriminator_loss(REAL, FAKE, 0.1, "lsgan"))
  assert got == pytest.approx(1.37 / 4 + 1.0625, abs=1e-6)


def test_unknown_loss_kind_raises():
  with pytest.raises(ValueError, match="'wgan'"):
    losses.discriminator_loss(REAL, FAKE, 0.0, "wgan")
  with pytest.raises(ValueError, match="'wgan'"):
    losses.generator_loss(FAKE, "wgan")


def test_penalties_of_given_gradients_by_hand():
  # two images' gradients with norms 3 (3, 4 / 5 scaled) and 0.5
  g = jnp.zeros((2, 32, 32, 1)).at[0, 0, 0, 0].set(1.8).at[0, 5, 7, 0].set(2.4)
  g = g.at[1, 3, 3, 0].set(0.5)
  assert float(losses.r1_penalty(g)) == pytest.approx((9.0 + 0.25) / 4, rel=1e-6)
  assert float(losses.gradient_penalty(g)) == pytest.approx((4.0 + 0.25) / 2, rel=1e-6)


def test_gradient_penalty_of_a_zero_gradient_is_one_with_finite_derivative():
  import jax  # pylint: disable=g-import-not-at-top
  g = jnp.zeros((2, 32, 32, 1))
  assert float(losses.gradient_penalty(g)) == 1.0
  assert np.all(np.isfinite(jax.grad(losses.gradient_penalty)(g)))


def test_interpolate_draws_one_weight_per_image_in_0_1():
  import jax  # pylint: disable=g-import-not-at-top
  real, fake = jnp.ones((64, 32, 32, 1)), -jnp.ones((64, 32, 32, 1))
  mixed = np.asarray(losses.interpolate(jax.random.PRNGKey(0), real, fake))
  a = (mixed + 1) / 2  # a * 1 + (1 - a) * -1 = 2a - 1
  assert np.allclose(a, a[:, :1, :1, :1], atol=1e-6)  # one weight per image
  assert 0 <= a.min() and a.max() <= 1 and a[:, 0, 0, 0].std() > 0.2
