"""Noise grids and the boundary condition (docs/maths.md §1, §8)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cm_jax import karras

LEVELS = karras.NoiseLevels()


def test_boundary_condition_is_exact():
  """f(x, eps) == x bit for bit, whatever the network returns."""
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 4, 4, 3)) * 3.0
  wild_net = lambda x_in, noise: 1e6 * jnp.sin(x_in) + noise[:, None, None, None]
  out = karras.consistency_function(wild_net, x, jnp.full((5,), LEVELS.sigma_min), LEVELS)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
  c_skip, c_out = karras.consistency_scalings(jnp.float32(LEVELS.sigma_min), LEVELS)
  assert float(c_skip) == 1.0 and float(c_out) == 0.0


def test_scalings_hand_computed():
  s = 1.0
  c_skip, c_out = karras.consistency_scalings(jnp.float32(s), LEVELS)
  np.testing.assert_allclose(c_skip, 0.25 / ((1 - 0.002) ** 2 + 0.25), rtol=1e-6)
  np.testing.assert_allclose(c_out, 0.5 * (1 - 0.002) / np.sqrt(1.25), rtol=1e-6)
  np.testing.assert_allclose(karras.c_in(jnp.float32(s), LEVELS), 1 / np.sqrt(1.25), rtol=1e-6)
  np.testing.assert_allclose(karras.c_noise(jnp.float32(80.0)), 0.25 * np.log(80.0), rtol=1e-6)


def test_karras_grid_hand_computed():
  g = karras.karras_sigmas(3, LEVELS)
  mid = ((0.002 ** (1 / 7) + 80 ** (1 / 7)) / 2) ** 7
  np.testing.assert_allclose(g, [0.002, mid, 80.0], rtol=1e-12)
  g18 = karras.karras_sigmas(18, LEVELS)
  assert np.all(np.diff(g18) > 0)
  # Traced indices give the same values as the numpy grid.
  traced = jax.jit(lambda i: karras.sigma_at(i, 18, LEVELS))(jnp.arange(1, 19))
  np.testing.assert_allclose(traced, g18, rtol=1e-5)


def test_ts_indices_map_to_descending_grid():
  s = karras.ts_to_sigmas([0, 11, 17], 18, LEVELS)
  t = lambda i: (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
  np.testing.assert_allclose(s, [t(0), t(11), t(17)], rtol=1e-12)
  assert s[0] == pytest.approx(80.0) and s[-1] == pytest.approx(0.002)
  with pytest.raises(ValueError, match="ts indices"):
    karras.ts_to_sigmas([0, 18], 18, LEVELS)


def test_edm_denoiser_scalings():
  """EDM's c_skip, c_out make the network's target unit-variance at every sigma for data of
  variance sd^2, and D(x, s) = c_skip x when the network returns 0 (per-sample sigmas)."""
  sd = LEVELS.sigma_data
  sigma = jnp.asarray([0.002, 0.5, 2.0, 80.0])
  c_skip, c_out = karras.denoiser_scalings(sigma, LEVELS)
  np.testing.assert_allclose(c_skip[1], 0.5, rtol=1e-6)
  np.testing.assert_allclose(c_out[1], sd / np.sqrt(2.0), rtol=1e-6)
  # F's target (y - c_skip (y + s n)) / c_out for y ~ N(0, sd^2), n ~ N(0, 1): unit variance.
  target_var = (c_skip**2 * sigma**2 + (1 - c_skip) ** 2 * sd**2) / c_out**2
  np.testing.assert_allclose(target_var, 1.0, rtol=1e-5)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 2, 2, 1))
  out = karras.denoiser(lambda x_in, noise: jnp.zeros_like(x_in), x, sigma, LEVELS)
  np.testing.assert_allclose(out, c_skip[:, None, None, None] * x, rtol=1e-6)
