"""The JAX CIFAR-10 release -> cm_jax NCSN++: its layout fills the network exactly, its attention
(three NIN layers) computes what cm_jax's does with the converted weights, its `State` msgpack
files round-trip bit for bit, and damaged or foreign files are clear errors."""
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cm_jax import models
from cm_jax.convert import jcm_ncsnpp, release_workdir
from cm_jax.convert.torch_weights import LayoutError
from cm_jax.errors import MissingPath
from cm_jax.models import layers
from configs import cifar10
from tests.helpers import jcm_layout
from tests.test_ncsnpp import perturbed_params, small_config


def cm_template(config):
  module = models.create_model(config.model, config.data)
  shapes = jax.eval_shape(lambda k: models.init_params(module, k, config.data),
                          jax.random.PRNGKey(0))
  return {"/".join(str(getattr(p, "key", p)) for p in path): tuple(s.shape)
          for path, s in jax.tree_util.tree_flatten_with_path(shapes)[0]}


def flat(tree):
  return dict(jcm_layout.leaves(tree))


def test_release_layout_fills_the_network_exactly():
  shapes = jcm_layout.ncsnpp_shapes()
  leaves = flat(shapes)
  assert len(leaves) == 445
  assert sum(int(np.prod(s)) for s in leaves.values()) == 56_395_651
  release = jcm_layout.constant_tree(shapes)
  params, report = jcm_ncsnpp.ncsnpp_from_release(release, "release")
  assert report["tensors"] == 445 and report["parameters"] == 56_395_651
  # Every release tensor used exactly once ...
  sources = [src for src, _ in report["mapping"]]
  assert sorted(sources) == sorted(leaves)
  # ... and the result is exactly cm_jax's network, every leaf filled.
  got = {k: tuple(v.shape) for k, v in flat(params).items()}
  assert got == cm_template(cifar10.get_config("method=edm"))
  value = {k: float(np.asarray(v).flat[0]) for k, v in flat(release).items()}
  placed = flat(params)
  for src, dst in report["mapping"]:
    assert value[src] in np.unique(placed[dst]), (src, dst)
  # q, k, v are the three C-wide column blocks of qkv, in that order.
  qkv = placed["MultiHeadAttention_2/qkv/kernel"]
  c = qkv.shape[0]
  for i, nin in enumerate(("NIN_0", "NIN_1", "NIN_2")):
    assert np.all(qkv[:, i * c:(i + 1) * c] == value[f"AttnBlockpp_2/{nin}/W"])


def _group_norm(x, scale, bias, groups, eps=1e-6):
  b, h, w, c = x.shape
  g = x.reshape(b, h, w, groups, c // groups)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = g.var(axis=(1, 2, 4), keepdims=True)
  return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


def test_release_attention_matches_cm_jax_with_converted_weights():
  """The release's AttnBlockpp, written out in numpy from its definition (NIN q, k, v over all
  channels, softmax over positions, NIN out, skip_rescale), against cm_jax's MultiHeadAttention
  holding the converted weights."""
  c, side = 32, 4
  rng = np.random.default_rng(0)
  block = {"GroupNorm_0": {"scale": 1 + 0.1 * rng.standard_normal(c), "bias": 0.1 *
                           rng.standard_normal(c)}}
  block.update({f"NIN_{i}": {"W": rng.standard_normal((c, c)) / np.sqrt(c),
                             "b": 0.1 * rng.standard_normal(c)} for i in range(4)})
  block = jax.tree.map(lambda a: np.asarray(a, np.float32), block)
  x = rng.standard_normal((2, side, side, c)).astype(np.float32)

  h = _group_norm(x.astype(np.float64), block["GroupNorm_0"]["scale"],
                  block["GroupNorm_0"]["bias"], min(c // 4, 32))
  nin = lambda t, i: t @ block[f"NIN_{i}"]["W"] + block[f"NIN_{i}"]["b"]
  q, k, v = (nin(h, i) for i in range(3))
  w = np.einsum("bhwc,bHWc->bhwHW", q, k) / np.sqrt(c)
  w = np.exp(w.reshape(2, side, side, -1) - w.reshape(2, side, side, -1).max(-1, keepdims=True))
  w = (w / w.sum(-1, keepdims=True)).reshape(2, side, side, side, side)
  want = (x + nin(np.einsum("bhwHW,bHWc->bhwc", w, v), 3)) / np.sqrt(2.0)

  params, _ = jcm_ncsnpp.ncsnpp_from_release({"AttnBlockpp_0": block}, "block")
  attn = layers.MultiHeadAttention(skip_rescale=True)
  got = attn.apply({"params": params["MultiHeadAttention_0"]}, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)


def _write(path, state):
  path.write_bytes(flax.serialization.msgpack_serialize(state))
  return str(path)


@pytest.mark.parametrize("with_target", [False, True])
def test_state_msgpack_round_trips_bit_identically(tmp_path, with_target):
  config = small_config("ncsnpp", fourier_scale=16.0)
  module = models.create_model(config.model, config.data)
  online, ema, target = (jax.tree.map(np.asarray, perturbed_params(module, config.data, seed=s))
                         for s in (1, 2, 3))
  state = jcm_ncsnpp.release_state(
      jcm_ncsnpp.release_from_ncsnpp(online), ema_params=jcm_ncsnpp.release_from_ncsnpp(ema),
      target_params=jcm_ncsnpp.release_from_ncsnpp(target) if with_target else None, step=7)
  src = _write(tmp_path / "checkpoint_80", state)
  for weights, evaluated in (("ema", ema), ("online", online)):
    got = jcm_ncsnpp.import_state(jcm_ncsnpp.read_state(src, what=src), weights=weights,
                                  what=src)
    assert got["step"] == 7
    for name, want in (("params", online), ("ema_params", evaluated)):
      for a, b in zip(jax.tree.leaves(got[name]), jax.tree.leaves(want), strict=True):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    assert jax.tree.structure(got["params"]) == jax.tree.structure(online)
    if with_target:
      for a, b in zip(jax.tree.leaves(got["target_params"]), jax.tree.leaves(target),
                      strict=True):
        np.testing.assert_array_equal(a, b)
    else:
      assert got["target_params"] is None
  # The network's outputs are those of the original weights, bit for bit.
  net = models.make_net(module)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 16, 16, 3)), jnp.float32)
  noise = jnp.asarray([-1.0, 0.5])
  imported = jax.tree.map(jnp.asarray, got["ema_params"])
  np.testing.assert_array_equal(np.asarray(net(imported, x, noise, None, False, None)),
                                np.asarray(net(jax.tree.map(jnp.asarray, online), x, noise,
                                               None, False, None)))


def test_edm_file_has_one_set_of_weights(tmp_path):
  config = small_config("ncsnpp")
  module = models.create_model(config.model, config.data)
  params = jax.tree.map(np.asarray, perturbed_params(module, config.data))
  src = _write(tmp_path / "edm_cifar10_ema",
               jcm_ncsnpp.release_state(jcm_ncsnpp.release_from_ncsnpp(params), edm_file=True))
  got = jcm_ncsnpp.import_state(jcm_ncsnpp.read_state(src, what=src), what=src)
  assert got["target_params"] is None
  for a, b in zip(jax.tree.leaves(got["ema_params"]), jax.tree.leaves(params), strict=True):
    np.testing.assert_array_equal(a, b)


def test_release_names_give_kind_and_distance():
  ident = lambda p, kind=None: release_workdir.identify(p, "cifar10", kind,
                                                        default_family="cifar10")
  assert ident("/d/cd-lpips/checkpoints/checkpoint_80") == release_workdir.Release(
      "cifar10", "cd", "lpips")
  assert ident("ct-lpips/checkpoints/checkpoint_74").kind == "ct"
  assert ident("/d/edm_cifar10_ema").kind == "edm"
  assert ident("/d/checkpoint_80", kind="cd").kind == "cd"
  with pytest.raises(ValueError, match="--kind=edm"):
    ident("/d/checkpoint_80")


def test_bad_files_are_clear_errors(tmp_path):
  config = small_config("ncsnpp")
  module = models.create_model(config.model, config.data)
  params = jcm_ncsnpp.release_from_ncsnpp(
      jax.tree.map(np.asarray, perturbed_params(module, config.data)))
  good = (tmp_path / "good").write_bytes(flax.serialization.msgpack_serialize(
      jcm_ncsnpp.release_state(params)))
  del good
  data = (tmp_path / "good").read_bytes()
  (tmp_path / "truncated").write_bytes(data[: len(data) // 2])
  (tmp_path / "junk").write_bytes(b"\x00\x01 definitely not msgpack" * 10)
  read = lambda name: jcm_ncsnpp.read_state(str(tmp_path / name), what=name)
  with pytest.raises(MissingPath, match="does not exist"):
    read("absent")
  with pytest.raises(LayoutError, match="is a directory"):
    jcm_ncsnpp.read_state(str(tmp_path), what="dir")
  for name in ("truncated", "junk"):
    with pytest.raises(LayoutError, match="not a flax msgpack checkpoint"):
      read(name)
  _write(tmp_path / "no_params", {"step": 3, "opt_state": {}})
  with pytest.raises(LayoutError, match="holds no params or params_ema"):
    jcm_ncsnpp.import_state(read("no_params"), what="no_params")
  _write(tmp_path / "online_only", {"step": 3, "params": params})
  with pytest.raises(LayoutError, match="--params=online"):
    jcm_ncsnpp.import_state(read("online_only"), what="online_only")
  assert jcm_ncsnpp.import_state(read("online_only"), weights="online", what="x")["step"] == 3
  foreign = {**params, "Combine_0": {"Conv_0": {"kernel": np.zeros((1, 1, 2, 2), np.float32)}}}
  with pytest.raises(LayoutError, match="Combine_0 is not a module"):
    jcm_ncsnpp.ncsnpp_from_release(foreign, "foreign")
  broken = {**params, "AttnBlockpp_0": {k: v for k, v in params["AttnBlockpp_0"].items()
                                        if k != "NIN_1"}}
  with pytest.raises(LayoutError, match="AttnBlockpp_0 has no NIN_1"):
    jcm_ncsnpp.ncsnpp_from_release(broken, "broken")
