"""Streaming FID / IS statistics, reference loading and their errors (no network needed)."""
import numpy as np
import pytest
import scipy.linalg

from cm_jax.evaluation import fid, two_step
from cm_jax.evaluation.frechet import frechet_distance


class FakeNet(fid.FeatureNet):
  """A fixed random projection of the pixels: enough to test the plumbing."""
  name, dim, channels, num_logits = "fake", 6, 3, 5

  def __init__(self, size=4):
    rng = np.random.default_rng(0)
    self.w = rng.standard_normal((size * size * 3, self.dim))
    self.v = rng.standard_normal((self.dim, self.num_logits))

  def __call__(self, images):
    images = fid.check_images(images, self.channels)
    f = images.reshape(len(images), -1).astype(np.float64) / 255 @ self.w
    return f, f @ self.v


def _images(n, seed=0, size=4):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _scipy_fid(f1, f2):
  mu1, mu2 = f1.mean(0), f2.mean(0)
  s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def _direct_is(logits, splits=10):
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  n = len(p) // splits
  scores = []
  for k in range(splits):
    part = p[k * n:(k + 1) * n]
    py = part.mean(0, keepdims=True)
    scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), 1))))
  return np.mean(scores), np.std(scores)


def test_streamed_fid_and_is_match_whole_array_references():
  net = FakeNet()
  fake, real = _images(203, 1), _images(150, 2)
  stats = fid.stream_stats(net, fid.iterate_batches(fake, 17), len(fake))
  ref = fid.reference_from_images(real, net, "real", batch_size=64)
  f_fake, l_fake = net(fake)
  got = frechet_distance(stats.moments.mean(), stats.moments.cov(), ref.mu, ref.sigma)
  assert got == pytest.approx(_scipy_fid(f_fake, net(real)[0]), rel=1e-9)
  assert stats.inception_score.result() == pytest.approx(_direct_is(l_fake), rel=1e-9)
  same = fid.reference_from_images(fake, net, "fake")
  assert frechet_distance(stats.moments.mean(), stats.moments.cov(), same.mu,
                          same.sigma) == pytest.approx(0, abs=1e-8)


def test_inception_score_bounds():
  uniform = fid.InceptionScore(total=100, num_classes=7)
  uniform.update(np.zeros((100, 7)))
  assert uniform.result() == pytest.approx((1.0, 0.0))
  confident = fid.InceptionScore(total=70, num_classes=7)
  confident.update(100.0 * np.eye(7)[np.arange(70) % 7])  # every class equally, certainly
  assert confident.result()[0] == pytest.approx(7.0, rel=1e-6)
  with pytest.raises(ValueError, match="at least 10 images"):
    short = fid.InceptionScore(total=5, num_classes=7)
    short.update(np.zeros((5, 7)))
    short.result()


def test_state_round_trip_resumes_exactly():
  net = FakeNet()
  images = _images(60, 3)
  whole = fid.stream_stats(net, [images], 60)
  first = fid.stream_stats(net, [images[:25]], 60)
  resumed = fid.FeatureStats(net.dim, net.num_logits, 60)
  resumed.restore({k: np.asarray(v) for k, v in first.state().items()})
  resumed.update(*net(images[25:]))
  np.testing.assert_allclose(resumed.moments.cov(), whole.moments.cov(), rtol=1e-12)
  assert resumed.inception_score.result() == pytest.approx(whole.inception_score.result())


def test_reference_files(tmp_path):
  net = FakeNet()
  real = _images(40, 4)
  f = net(real)[0]
  stats_file, adm_file, bad_dim, images_only = (tmp_path / n for n in
                                                ("s.npz", "adm.npz", "bad.npz", "img.npz"))
  np.savez(stats_file, mu=f.mean(0), sigma=np.cov(f, rowvar=False))
  np.savez(adm_file, arr_0=real, mu=f.mean(0), sigma=np.cov(f, rowvar=False))  # ADM batch layout
  np.savez(bad_dim, mu=np.zeros(2048), sigma=np.eye(2048))
  np.savez(images_only, arr_0=real)
  for path in (stats_file, adm_file, images_only):
    ref = fid.load_reference(str(path), net)
    np.testing.assert_allclose(ref.mu, f.mean(0), rtol=1e-10)
  with pytest.raises(ValueError, match="2048-d statistics, but the fake features are 6-d"):
    fid.load_reference(str(bad_dim), net)
  np.savez(tmp_path / "nothing.npz", x=np.zeros(3))
  with pytest.raises(ValueError, match="neither mu/sigma nor arr_0"):
    fid.load_reference(str(tmp_path / "nothing.npz"), net)
  with pytest.raises(FileNotFoundError):
    fid.load_reference(str(tmp_path / "missing.npz"), net)


def test_sample_files_of_wrong_dtype_or_shape_are_clear_errors(tmp_path):
  cases = {"float.npz": np.zeros((4, 8, 8, 3), np.float32),
           "nchw.npz": np.zeros((4, 3, 8, 8), np.uint8),
           "flat.npz": np.zeros((4, 64), np.uint8)}
  for name, arr in cases.items():
    np.savez(tmp_path / name, arr_0=arr)
    with pytest.raises(ValueError, match="arr_0 must be uint8 \\[N, H, W, C\\]"):
      fid.load_sample_file(str(tmp_path / name))
  np.savez(tmp_path / "gray.npz", arr_0=np.zeros((4, 8, 8, 1), np.uint8))
  with pytest.raises(ValueError, match="1 channels, the feature network takes 3"):
    fid.load_sample_file(str(tmp_path / "gray.npz"), channels=3)
  np.savez(tmp_path / "nokey.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match="has no arr_0"):
    fid.load_sample_file(str(tmp_path / "nokey.npz"))
  with pytest.raises(ValueError, match="must be uint8"):
    FakeNet()(np.zeros((2, 4, 4, 3), np.float32))


def test_precision_recall():
  rng = np.random.default_rng(0)
  real = rng.standard_normal((200, 4))
  assert fid.precision_recall(real, real.copy()) == (1.0, 1.0)
  far = real + 100.0
  assert fid.precision_recall(real, far) == (0.0, 0.0)
  collapsed = real[:10] * 0.01  # a few points near the centre: precise, little recall
  p, r = fid.precision_recall(real, np.repeat(collapsed, 20, axis=0))
  assert p == 1.0 and r < 0.3


def test_ternary_search_finds_the_minimum_of_unimodal_scores():
  for best in range(1, 39):
    found, seen = two_step.ternary_search(lambda t: abs(t - best) + 0.1 * t, 1, 38)
    assert found == best and len(seen) < 20


def test_eigh_frechet_matches_scipy_sqrtm_reference():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((400, 128)) @ rng.standard_normal((128, 128)) * 0.1
  b = rng.standard_normal((400, 128)) @ rng.standard_normal((128, 128)) * 0.12 + 0.3
  want = _scipy_fid(a, b)
  mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
  assert frechet_distance(mu1, s1, mu2, s2, method="eigh") == pytest.approx(want, rel=1e-9)
  assert frechet_distance(mu1, s1, mu1, s1, method="eigh") == pytest.approx(0, abs=1e-8)
  few = a[:50]  # fewer samples than dimensions: singular, still finite and near sqrtm's
  got = frechet_distance(few.mean(0), np.cov(few, rowvar=False), mu2, s2, method="eigh")
  assert got == pytest.approx(_scipy_fid(few, b), rel=1e-6)
  with pytest.raises(ValueError, match="eigenvalue"):
    frechet_distance(mu1, -s1, mu2, s2, method="eigh")


def test_inception_without_weights_names_the_converter(tmp_path):
  with pytest.raises(ValueError, match="python -m cm_jax.convert inception"):
    fid.load_inception_net(None)
  with pytest.raises(FileNotFoundError, match="python -m cm_jax.convert inception"):
    fid.load_inception_net(str(tmp_path))


def test_sample_files_are_read_batch_by_batch(tmp_path):
  images = _images(23, 5, size=6)
  for save in (np.savez, np.savez_compressed):
    path = str(tmp_path / f"{save.__name__}.npz")
    save(path, arr_0=images, arr_1=np.arange(23))
    f = fid.load_sample_file(path, channels=3)
    assert len(f) == 23 and f.shape == images.shape
    chunks = list(fid.iterate_batches(f, 10))
    assert [len(c) for c in chunks] == [10, 10, 3]
    np.testing.assert_array_equal(np.concatenate(chunks), images)
