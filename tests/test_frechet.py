"""Frechet distance and streaming statistics against independent float64 references."""

import numpy as np
import pytest

from cm_jax.evaluation.frechet import RunningStats, frechet_distance, stats_from_features


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh(a)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _reference_frechet(mu1, s1, mu2, s2) -> float:
  # tr sqrt(s1 s2) = tr sqrt(s1^1/2 s2 s1^1/2): a symmetric eigenproblem, no sqrtm involved.
  r1 = _psd_sqrt(s1)
  inner = np.linalg.eigvalsh(r1 @ s2 @ r1)
  tr_covmean = np.sum(np.sqrt(np.clip(inner, 0, None)))
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def _two_gaussians(dim: int = 8, n: int = 500):
  rng = np.random.default_rng(0)
  a = rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim)) + rng.normal(size=dim)
  b = rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim)) * 0.5 + 2.0
  return a, b


def test_matches_independent_reference():
  a, b = _two_gaussians()
  mu1, s1 = np.mean(a, 0), np.cov(a, rowvar=False)
  mu2, s2 = np.mean(b, 0), np.cov(b, rowvar=False)
  got = frechet_distance(mu1, s1, mu2, s2)
  assert isinstance(got, float)
  np.testing.assert_allclose(got, _reference_frechet(mu1, s1, mu2, s2), rtol=1e-9)


def test_identical_stats_give_zero_and_distance_is_symmetric():
  a, b = _two_gaussians()
  mu1, s1 = stats_from_features(a)
  mu2, s2 = stats_from_features(b)
  assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-6
  np.testing.assert_allclose(frechet_distance(mu1, s1, mu2, s2),
                             frechet_distance(mu2, s2, mu1, s1), rtol=1e-9)


def test_diagonal_gaussians_closed_form():
  rng = np.random.default_rng(1)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  v1, v2 = rng.uniform(0.1, 3, size=6), rng.uniform(0.1, 3, size=6)
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
  np.testing.assert_allclose(frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)), want,
                             rtol=1e-10)


def test_running_stats_over_chunks_match_whole_array():
  rng = np.random.default_rng(2)
  x = (rng.normal(size=(1001, 5)) + 1e3).astype(np.float32)  # large mean: tests the stable merge
  stats = RunningStats()
  for lo, hi in [(0, 1), (1, 257), (257, 257), (257, 900), (900, 1001)]:
    stats.update(x[lo:hi])
  assert stats.count == 1001
  np.testing.assert_allclose(stats.mean(), np.mean(x.astype(np.float64), 0), rtol=1e-12)
  np.testing.assert_allclose(stats.cov(), np.cov(x.astype(np.float64), rowvar=False),
                             rtol=1e-9, atol=1e-12)
  mu, sigma = stats_from_features(x)
  np.testing.assert_allclose(sigma, stats.cov(), rtol=1e-9, atol=1e-12)


def test_dimension_mismatch_raises():
  mu, s = np.zeros(4), np.eye(4)
  with pytest.raises(ValueError, match='dimension 4'):
    frechet_distance(mu, s, np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match=r'\[4, 4\]'):
    frechet_distance(mu, np.eye(3), mu, s)
  stats = RunningStats()
  stats.update(np.zeros((2, 4)))
  with pytest.raises(ValueError, match='dimension 4'):
    stats.update(np.zeros((2, 3)))


def test_too_few_samples_raise():
  stats = RunningStats()
  with pytest.raises(ValueError):
    stats.mean()
  stats.update(np.zeros((1, 3)))
  with pytest.raises(ValueError, match='at least 2'):
    stats.cov()


def test_rank_deficient_stats_stay_finite():
  rng = np.random.default_rng(3)
  mu1, s1 = stats_from_features(rng.normal(size=(4, 10)))  # rank 3 of 10
  mu2, s2 = stats_from_features(rng.normal(size=(4, 10)) + 1)
  got = frechet_distance(mu1, s1, mu2, s2)
  assert np.isfinite(got) and got > 0
  np.testing.assert_allclose(got, _reference_frechet(mu1, s1, mu2, s2), rtol=1e-4)


def test_exactly_singular_product_falls_back_to_offset():
  mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 2.0])
  with pytest.warns(RuntimeWarning, match='near-singular'):
    got = frechet_distance(mu1, np.zeros((3, 3)), mu2, np.zeros((3, 3)))
  np.testing.assert_allclose(got, 9.0, atol=1e-4)


def test_large_imaginary_part_raises():
  # Not a covariance: sqrt(diag(1, -1)) has an imaginary unit on the diagonal.
  with pytest.raises(ValueError, match='imaginary'):
    frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
