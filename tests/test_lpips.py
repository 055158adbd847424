"""LPIPS (VGG16 + v0.1 heads) against the lpips package with the same random weights; its
converter; distance=lpips wiring and its errors. Needs the [test] extra's torch and lpips."""
import jax
import numpy as np
import pytest

from cm_jax import distances, methods, models
from cm_jax.convert import feature_nets
from cm_jax.convert import torch_weights
from cm_jax.models import lpips
from tests.helpers import torch_reference as tr


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  root = tmp_path_factory.mktemp("lpips")
  model, vgg_state, heads = tr.lpips_reference(seed=0)
  vgg, head_file, dst = str(root / "vgg16.pth"), str(root / "heads.pth"), str(root / "flax")
  tr.save_state_dict(vgg_state, vgg)
  tr.save_state_dict(heads, head_file)
  feature_nets.convert_lpips(vgg, head_file, dst)
  return model, vgg_state, heads, dst


def _pairs(size, seed):
  a = tr.smooth_images(2, size, seed=seed).astype(np.float32) / 127.5 - 1
  b = np.clip(a + 0.2 * np.random.default_rng(seed).standard_normal(a.shape), -1, 1)
  return a, b.astype(np.float32)


def _torch_lpips(model, a, b):
  import torch
  to_t = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2)
  with torch.no_grad():
    return model(to_t(a), to_t(b)).reshape(-1).numpy()


@pytest.mark.slow
def test_matches_lpips_package(reference):
  model, *_, dst = reference
  params = lpips.load(dst)
  a, b = _pairs(64, 1)  # 64 px: the network alone, no resize
  want = _torch_lpips(model, a, b)
  got = np.asarray(jax.jit(lambda p, x, y: lpips.LPIPS().apply({"params": p}, x, y))(params, a, b))
  np.testing.assert_allclose(got, want, rtol=1e-4)
  assert np.all(want > 0)


def test_distance_resizes_small_inputs_to_224(reference):
  import torch
  import torch.nn.functional as F
  model, *_, dst = reference
  a, b = _pairs(32, 2)
  resize = lambda x: F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=224,
                                   mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
  want = _torch_lpips(model, resize(a), resize(b))  # what the CM release feeds its LPIPS
  dist = distances.get_distance("lpips", (32, 32, 3), dst)
  np.testing.assert_allclose(np.asarray(jax.jit(dist)(a, b)), want, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(jax.jit(dist)(a, a)), 0.0, atol=1e-7)


def test_converter_covers_every_key(reference):
  _, vgg_state, heads, _ = reference
  vgg = {k: v.numpy() for k, v in vgg_state.items()}
  hd = {k: v.numpy() for k, v in heads.items()}
  params, report = torch_weights.lpips_from_state_dicts(vgg, hd)
  assert set(report["used"]) | set(report["dropped"]) == set(vgg) | set(hd)
  assert all(k.startswith("classifier.") for k in report["dropped"])
  assert len(jax.tree_util.tree_leaves(params)) == len(report["used"]) == 26 + 5
  with pytest.raises(torch_weights.LayoutError, match="lin0..lin4"):
    torch_weights.lpips_from_state_dicts(vgg, {"lin0.model.1.weight": hd["lin0.model.1.weight"]})
  with pytest.raises(torch_weights.LayoutError, match="features.0.weight"):
    torch_weights.lpips_from_state_dicts(hd, hd)
  bn = dict(vgg, **{"features.1.running_mean": np.zeros(64, np.float32)})  # vgg16_bn-like
  with pytest.raises(torch_weights.LayoutError, match="features.1.running_mean"):
    torch_weights.lpips_from_state_dicts(bn, hd)


def _ct_config(distance, weights):
  from configs import digits
  c = digits.get_config("method=ct")
  c.consistency.distance = distance
  c.consistency.lpips_weights = weights
  return c


@pytest.mark.slow
def test_methods_load_the_configured_weights(reference, tmp_path):
  dst = reference[3]
  for method in ("ct", "ict"):
    c = _ct_config("lpips", dst)
    c.method = method
    module = models.create_model(c.model, c.data)
    m = methods.create_method(c, models.make_net(module), models.sample_shape(c.data))
    if method == "ct":  # one evaluation (VGG16 at 224 px) is enough to show the weights loaded
      x = np.zeros((1, 16, 16, 1), np.float32)
      np.testing.assert_allclose(np.asarray(jax.jit(m.distance)(x, x + 0.5)),
                                 np.asarray(lpips.lpips_distance(lpips.load(dst), x, x + 0.5)),
                                 rtol=1e-5)
  for weights, message in (("", "python -m cm_jax.convert lpips"),
                           (str(tmp_path), "python -m cm_jax.convert lpips")):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
      distances.get_distance("lpips", (16, 16, 1), weights)
