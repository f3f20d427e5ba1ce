"""Fréchet distance and KID against hand-computed values and scipy's general sqrtm."""

import numpy as np
import pytest
import scipy.linalg

from dcgan_jax import fid


def test_feature_stats_match_numpy():
  x = np.random.default_rng(0).normal(size=(50, 4))
  stats = fid.feature_stats(x)
  np.testing.assert_allclose(stats.mu, x.mean(0), rtol=1e-12)
  np.testing.assert_allclose(stats.sigma, np.cov(x, rowvar=False), rtol=1e-12)
  assert stats.count == 50 and stats.sigma.dtype == np.float64


def test_frechet_distance_of_1d_gaussians():
  # FD of N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2.
  a = fid.FeatureStats(np.array([1.0]), np.array([[4.0]]), 10)
  b = fid.FeatureStats(np.array([-2.0]), np.array([[9.0]]), 10)
  assert fid.frechet_distance(a, b) == pytest.approx(9.0 + 1.0, abs=1e-12)


def test_frechet_distance_of_diagonal_gaussians():
  a = fid.FeatureStats(np.zeros(3), np.diag([1.0, 4.0, 9.0]), 10)
  b = fid.FeatureStats(np.array([0.0, 1.0, 0.0]), np.diag([4.0, 4.0, 1.0]), 10)
  # mean term 1; per dimension (sqrt(a) - sqrt(b))^2 = 1 + 0 + 4
  assert fid.frechet_distance(a, b) == pytest.approx(6.0, abs=1e-10)


def test_frechet_distance_matches_scipy_sqrtm_and_is_zero_on_itself():
  rng = np.random.default_rng(1)
  a = fid.feature_stats(rng.normal(size=(200, 16)))
  b = fid.feature_stats(rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16)) * 0.5 + 0.3)
  covmean = scipy.linalg.sqrtm(a.sigma @ b.sigma).real
  diff = a.mu - b.mu
  expected = diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.trace(covmean)
  assert fid.frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
  assert abs(fid.frechet_distance(a, a)) < 1e-9


def test_frechet_distance_with_singular_covariances():
  # Fewer samples than features: both covariances are singular; the result stays real,
  # finite and non-negative, and equals the distance computed in an exact basis.
  rng = np.random.default_rng(2)
  a = fid.feature_stats(rng.normal(size=(5, 32)))
  b = fid.feature_stats(rng.normal(size=(6, 32)) + 1.0)
  value = fid.frechet_distance(a, b)
  assert np.isfinite(value) and value > 0
  assert fid.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_refuses_different_sizes():
  a = fid.FeatureStats(np.zeros(3), np.eye(3), 5)
  b = fid.FeatureStats(np.zeros(4), np.eye(4), 5)
  with pytest.raises(ValueError, match="3 and 4"):
    fid.frechet_distance(a, b)


def test_mmd2_unbiased_by_hand():
  x = np.array([[1.0, 0.0], [0.0, 1.0]])
  y = np.array([[1.0, 1.0], [0.0, 0.0]])
  k = lambda u, v: (u @ v / 2 + 1) ** 3  # noqa: E731
  within_x = 2 * k(x[0], x[1]) / 2
  within_y = 2 * k(y[0], y[1]) / 2
  across = np.mean([k(u, v) for u in x for v in y])
  expected = within_x + within_y - 2 * across
  assert fid.mmd2_unbiased(x, y) == pytest.approx(expected, rel=1e-12)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
  rng = np.random.default_rng(3)
  x, y, z = rng.normal(size=(400, 8)), rng.normal(size=(400, 8)), rng.normal(size=(400, 8)) + 1
  same_mean, same_std = fid.kernel_inception_distance(x, y, num_subsets=20, subset_size=200)
  diff_mean, _ = fid.kernel_inception_distance(x, z, num_subsets=20, subset_size=200)
  assert abs(same_mean) < 3 * same_std + 1e-3
  assert diff_mean > 10 * max(abs(same_mean), same_std)
  # seeded: the same subsets give the same numbers
  assert fid.kernel_inception_distance(x, z, 5, 100, seed=7) == \
      fid.kernel_inception_distance(x, z, 5, 100, seed=7)
