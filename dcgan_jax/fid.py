"""Fréchet distance and kernel inception distance on features of any extractor.

Both are computed in float64 (inside a scoped `jax.enable_x64`), as the reference
implementations compute them in numpy float64: covariances of 2048 features summed over
tens of thousands of images lose digits in float32.

The matrix square root. FID needs tr((S1 S2)^(1/2)); S1 S2 is not symmetric, and a general
square root (scipy's sqrtm, a Schur decomposition) can return complex values or fail when S1 or
S2 is singular, which it is whenever there are fewer samples than features. Here the trace is
taken through a symmetric matrix with the same eigenvalues: with R = S1^(1/2) (from the
eigendecomposition of S1), R S2 R is symmetric positive semi-definite and similar to S1 S2,
so tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i(R S2 R)). Both eigendecompositions are of symmetric
matrices (`eigh`, always real, backward stable); eigenvalues below the rounding level of
their matrix (F * eps * the largest), including those that rounding makes slightly negative,
are set to 0 before the square root, which would otherwise magnify that noise.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class FeatureStats(NamedTuple):
  """Mean (F,) and covariance (F, F) of N feature vectors, float64, and N."""
  mu: np.ndarray
  sigma: np.ndarray
  count: int


def feature_stats(features_NxF: np.ndarray) -> FeatureStats:
  """Computes the mean and unbiased covariance (divisor N - 1, as numpy.cov) of the rows."""
  features_NxF = np.asarray(features_NxF)
  if features_NxF.ndim != 2 or features_NxF.shape[0] < 2:
    raise ValueError(f"features must be (N >= 2, F), got shape {features_NxF.shape}")
  with jax.enable_x64(True):
    x = jnp.asarray(features_NxF, jnp.float64)
    mu = jnp.mean(x, axis=0)
    centred = x - mu
    sigma = centred.T @ centred / (x.shape[0] - 1)
    return FeatureStats(np.asarray(mu), np.asarray(sigma), int(x.shape[0]))


def _numerical_zero_to_zero(evals: jax.Array) -> jax.Array:
  """Eigenvalues below the rounding level of their matrix (F * eps * the largest) set to 0:
  they are noise, and the square root would magnify them (sqrt(1e-16) = 1e-8)."""
  tol = evals.shape[0] * jnp.finfo(evals.dtype).eps * jnp.max(jnp.abs(evals))
  return jnp.where(evals > tol, evals, 0.0)


def _trace_sqrt_product(sigma1: jax.Array, sigma2: jax.Array) -> jax.Array:
  """Computes tr((sigma1 sigma2)^(1/2)) for symmetric PSD sigma1, sigma2 (see the module
  docstring)."""
  evals1, evecs1 = jnp.linalg.eigh(sigma1)
  root1 = (evecs1 * jnp.sqrt(_numerical_zero_to_zero(evals1))) @ evecs1.T
  middle = root1 @ sigma2 @ root1
  middle = (middle + middle.T) / 2  # exactly symmetric despite rounding
  return jnp.sum(jnp.sqrt(_numerical_zero_to_zero(jnp.linalg.eigvalsh(middle))))


@jax.jit
def _frechet_distance(mu_a, s_a, mu_b, s_b) -> jax.Array:
  diff = mu_a - mu_b
  return diff @ diff + jnp.trace(s_a) + jnp.trace(s_b) - 2 * _trace_sqrt_product(s_a, s_b)


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
  """Computes ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), the Fréchet distance between
  the two Gaussians (FID when the features are the FID Inception's pool features)."""
  if a.mu.shape != b.mu.shape:
    raise ValueError(f"feature sizes differ: {a.mu.shape[0]} and {b.mu.shape[0]}")
  with jax.enable_x64(True):
    f64 = lambda v: jnp.asarray(v, jnp.float64)  # noqa: E731
    return float(_frechet_distance(f64(a.mu), f64(a.sigma), f64(b.mu), f64(b.sigma)))


def _polynomial_kernel(x: jax.Array, y: jax.Array) -> jax.Array:
  """Computes k(x, y) = (x . y / F + 1)^3, the kernel of the KID paper (Binkowski et al. 2018)."""
  return (x @ y.T / x.shape[1] + 1.0) ** 3


@jax.jit
def _mmd2_unbiased(x: jax.Array, y: jax.Array) -> jax.Array:
  m, n = x.shape[0], y.shape[0]
  k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
  within_x = (jnp.sum(k_xx) - jnp.trace(k_xx)) / (m * (m - 1))
  within_y = (jnp.sum(k_yy) - jnp.trace(k_yy)) / (n * (n - 1))
  return within_x + within_y - 2 * jnp.mean(k_xy)


def mmd2_unbiased(x_MxF: np.ndarray, y_NxF: np.ndarray) -> float:
  """Returns the unbiased estimate of MMD^2 with the polynomial kernel: the means of k over
  distinct pairs within x and within y, minus twice the mean over all pairs across."""
  with jax.enable_x64(True):
    return float(_mmd2_unbiased(jnp.asarray(x_MxF, jnp.float64), jnp.asarray(y_NxF, jnp.float64)))


def kernel_inception_distance(x_MxF: np.ndarray, y_NxF: np.ndarray, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
  """Computes KID: mean and standard deviation of mmd2_unbiased over `num_subsets` random subsets of
  `subset_size` rows of each set (without replacement within a subset; all rows if fewer),
  drawn with a seeded generator, as in the KID paper and torch-fidelity."""
  x_MxF, y_NxF = np.asarray(x_MxF), np.asarray(y_NxF)
  if x_MxF.shape[1] != y_NxF.shape[1]:
    raise ValueError(f"feature sizes differ: {x_MxF.shape[1]} and {y_NxF.shape[1]}")
  size = min(subset_size, x_MxF.shape[0], y_NxF.shape[0])
  if size < 2:
    raise ValueError(f"KID needs at least 2 samples in each set, got {size}")
  rng = np.random.default_rng(seed)
  values = [mmd2_unbiased(x_MxF[rng.choice(x_MxF.shape[0], size, replace=False)],
                          y_NxF[rng.choice(y_NxF.shape[0], size, replace=False)])
            for _ in range(num_subsets)]
  return float(np.mean(values)), float(np.std(values))
