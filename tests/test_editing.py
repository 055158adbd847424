"""Zero-shot editing (CM Algorithm 4): exact known parts, orthogonal bases, interpolation ends.

No trained model is needed: the exact consistency function of per-pixel Gaussian data N(0, v),
f(x, s) = x sqrt(v + eps^2) / sqrt(v + s^2), maps every noise level to the same endpoint.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cm_jax import editing, karras, sampling

LEVELS = karras.NoiseLevels()
V = 0.25
SIGMAS = [80.0, 2.5, 0.5]
B, H, W = 5, 8, 8


def gaussian_f(x, sigma):
  s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
  return x * np.sqrt(V + LEVELS.sigma_min**2) / jnp.sqrt(V + s**2)


def reference(channels=3, batch=B, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (batch, H, W, channels), minval=-1, maxval=1)


def run_edit(op, omega, y, indices=None, sigmas=SIGMAS):
  indices = jnp.arange(len(y)) if indices is None else indices
  run = jax.jit(lambda y, omega, idx: editing.edit(gaussian_f, op, y, omega, jax.random.PRNGKey(1),
                                                   idx, sigmas, LEVELS))
  return run(y, omega, indices)


@pytest.mark.parametrize("basis", [editing.colour_basis(), editing.patch_basis(2),
                                   editing.patch_basis(4), editing.patch_basis(8)])
def test_bases_are_orthogonal(basis):
  d = basis.shape[0]
  np.testing.assert_allclose(basis @ basis.T, np.eye(d), atol=1e-12)
  np.testing.assert_allclose(basis.T @ basis, np.eye(d), atol=1e-12)


def test_first_axes_are_luminance_and_patch_mean():
  luma = np.asarray(editing.LUMA_WEIGHTS)
  np.testing.assert_allclose(editing.colour_basis()[:, 0], luma / np.linalg.norm(luma), atol=1e-12)
  for p in (2, 4, 8):
    np.testing.assert_allclose(editing.patch_basis(p)[:, 0], np.full(p * p, 1.0 / p), atol=1e-12)
  # The super-resolution operator's first coefficient is p * the patch mean.
  op, _ = editing.super_resolution(4, H, W)
  y = reference(1)
  means = y.reshape(B, H // 4, 4, W // 4, 4, 1).mean(axis=(2, 4))
  np.testing.assert_allclose(op.forward(y)[..., 0], 4 * means, atol=1e-5)
  np.testing.assert_allclose(op.inverse(op.forward(y)), y, atol=1e-5)


@pytest.mark.parametrize("mask", ["center", "left", "strokes", "random"])
def test_inpainting_keeps_the_known_pixels(mask):
  y = reference()
  if mask == "center":
    m = editing.center_mask(H, W)
  elif mask == "left":
    m = editing.left_half_mask(H, W)
  elif mask == "strokes":
    m = editing.stroke_masks(jax.random.PRNGKey(2), jnp.arange(B), H, W)
  else:
    m = jax.random.bernoulli(jax.random.PRNGKey(3), 0.5, (B, H, W, 3)).astype(jnp.float32)
  op, omega = editing.inpainting(m)
  x = run_edit(op, omega, y)
  keep = np.broadcast_to(np.asarray(m) == 0, y.shape)
  assert keep.any() and (~keep).any()
  np.testing.assert_allclose(np.asarray(x)[keep], np.asarray(y)[keep], atol=1e-6)
  assert np.all(np.abs(np.asarray(x)[~keep]) <= 1.0)


def test_builtin_masks():
  c = editing.center_mask(16, 16)[..., 0]
  assert c.sum() == 64 and c[4:12, 4:12].all()
  l = editing.left_half_mask(16, 16)[..., 0]
  assert l[:, :8].all() and not l[:, 8:].any()
  strokes = np.asarray(editing.stroke_masks(jax.random.PRNGKey(0), jnp.arange(8), 16, 16))
  assert strokes.shape == (8, 16, 16, 1) and set(np.unique(strokes)) <= {0.0, 1.0}
  assert 0.02 < strokes.mean() < 0.6 and not np.array_equal(strokes[0], strokes[1])
  # Mask i depends on (key, i) only.
  alone = editing.stroke_masks(jax.random.PRNGKey(0), jnp.arange(5, 6), 16, 16)
  np.testing.assert_array_equal(alone[0], strokes[5])


def test_colorization_keeps_luminance():
  y = reference(3)
  op, omega = editing.colorization(3)
  x = np.asarray(run_edit(op, omega, y))
  luma = np.asarray(editing.colour_basis())[:, 0]
  np.testing.assert_allclose(x @ luma, np.asarray(y) @ luma, atol=1e-5)
  # The chroma axes were generated, not copied.
  assert np.abs(x - np.asarray(y)).max() > 1e-2
  with pytest.raises(ValueError, match="3 channels"):
    editing.colorization(1)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_super_resolution_keeps_patch_means(factor):
  y = reference(1)
  op, omega = editing.super_resolution(factor, H, W)
  x = np.asarray(run_edit(op, omega, y))
  pool = lambda a: a.reshape(B, H // factor, factor, W // factor, factor, 1).mean(axis=(2, 4))
  np.testing.assert_allclose(pool(x), pool(np.asarray(y)), atol=1e-5)
  known = np.asarray(editing.known_part(op, y, omega))  # the blocky low-resolution reference
  np.testing.assert_allclose(known, np.repeat(np.repeat(pool(np.asarray(y)), factor, 1), factor, 2),
                             atol=1e-5)


def test_super_resolution_errors():
  with pytest.raises(ValueError, match="factor must be one of"):
    editing.super_resolution(3, 12, 12)
  with pytest.raises(ValueError, match="not divisible"):
    editing.super_resolution(4, 12, 10)


def test_generating_everything_is_multistep_sampling():
  y = reference(1)
  op, omega = editing.inpainting(jnp.ones((H, W, 1)))
  idx = jnp.arange(3, 3 + B)
  x = run_edit(op, omega, y, idx)
  s = sampling.multistep_sample(gaussian_f, jax.random.PRNGKey(1), idx, (H, W, 1), SIGMAS, LEVELS)
  np.testing.assert_allclose(x, s, atol=1e-6)


def test_edit_i_does_not_depend_on_the_batch():
  y = reference(3, batch=7)
  op, omega = editing.super_resolution(2, H, W)
  full = run_edit(op, omega, y, jnp.arange(7))
  some = jnp.asarray([6, 0, 4])  # another batch, another order
  np.testing.assert_allclose(run_edit(op, omega, y[some], some), full[some], atol=1e-6)


def test_denoise_is_one_evaluation_at_the_known_level():
  y = reference(1)
  noisy = editing.add_noise(jax.random.PRNGKey(4), jnp.arange(B), y, 0.5)
  assert 0.3 < float(jnp.std(noisy - y)) < 0.7
  x = editing.denoise(gaussian_f, noisy, 0.5)
  np.testing.assert_allclose(x, jnp.clip(gaussian_f(noisy, jnp.full((B,), 0.5)), -1, 1), atol=1e-7)
  # At the boundary sigma = eps the consistency function returns its input.
  np.testing.assert_allclose(editing.denoise(gaussian_f, y, LEVELS.sigma_min), y, atol=1e-7)


def test_slerp_endpoints_and_norm():
  a, b = reference(1, seed=5), reference(1, seed=6)
  np.testing.assert_allclose(editing.slerp(a, b, 0.0), a, atol=1e-5)
  np.testing.assert_allclose(editing.slerp(a, b, 1.0), b, atol=1e-5)
  # Equal-norm endpoints: the path stays on the sphere.
  unit = lambda v: v / jnp.linalg.norm(v.reshape(B, -1), axis=-1)[:, None, None, None]
  a, b = unit(a), unit(b)
  mid = editing.slerp(a, b, jnp.full((B,), 0.5))
  np.testing.assert_allclose(jnp.linalg.norm(mid.reshape(B, -1), axis=-1), 1.0, rtol=1e-5)
  # Parallel endpoints fall back to a straight line (no division by sin 0).
  np.testing.assert_allclose(editing.slerp(a, 2 * a, 0.5), 1.5 * a, atol=1e-6)


@pytest.mark.parametrize("sigmas", [[80.0], [80.0, 2.5]])
def test_interpolation_ends_are_the_endpoints_samples(sigmas):
  key, idx = jax.random.PRNGKey(7), jnp.zeros((2,), jnp.int32)
  z1 = jnp.broadcast_to(reference(1, batch=1, seed=8), (2, H, W, 1))
  z2 = jnp.broadcast_to(reference(1, batch=1, seed=9), (2, H, W, 1))
  alphas = jnp.asarray([0.0, 1.0])
  x = editing.interpolate_noise(gaussian_f, z1, z2, alphas, key, idx, sigmas, LEVELS)
  # The endpoint's sample: the same levels, noise and later-level noise.
  sample = lambda z: editing.interpolate(gaussian_f, 80.0 * z, 80.0 * z, jnp.zeros(1), key,
                                         idx[:1], sigmas, LEVELS)[0]
  np.testing.assert_allclose(x[0], sample(z1[:1]), atol=1e-5)
  np.testing.assert_allclose(x[1], sample(z2[:1]), atol=1e-5)
  if len(sigmas) == 1:
    np.testing.assert_allclose(x[0], jnp.clip(gaussian_f(80.0 * z1[:1], jnp.full((1,), 80.0)),
                                              -1, 1)[0], atol=1e-6)


def test_image_interpolation_goes_through_the_noised_images():
  x1, x2 = reference(1, batch=1, seed=10), reference(1, batch=1, seed=11)
  z1, z2 = reference(1, batch=1, seed=12), reference(1, batch=1, seed=13)
  out = editing.interpolate_images(gaussian_f, jnp.repeat(x1, 3, 0), jnp.repeat(x2, 3, 0),
                                   jnp.repeat(z1, 3, 0), jnp.repeat(z2, 3, 0),
                                   jnp.asarray([0.0, 0.5, 1.0]), jax.random.PRNGKey(0),
                                   jnp.zeros((3,), jnp.int32), [0.8], LEVELS)
  f = lambda x: jnp.clip(gaussian_f(x, jnp.full((1,), 0.8)), -1, 1)[0]
  np.testing.assert_allclose(out[0], f(x1 + 0.8 * z1), atol=1e-5)
  np.testing.assert_allclose(out[2], f(x2 + 0.8 * z2), atol=1e-5)
  assert not np.allclose(out[1], out[0]) and not np.allclose(out[1], out[2])
