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
