"""The Flax FID Inception against pytorch-fid with the same random weights, and its converter.

Needs the [test] extra's torch, torchvision and pytorch-fid (it fails, never skips, without them).
"""
import os
import re

import jax
import numpy as np
import pytest

from cm_jax.convert import feature_nets
from cm_jax.convert import torch_weights
from cm_jax.errors import UserError
from cm_jax.evaluation import fid, inception
from tests.helpers import torch_reference as tr


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """pytorch-fid's model with random weights, its .pth file, and the converted directory."""
  root = tmp_path_factory.mktemp("inception")
  model, base, state = tr.fid_inception(seed=0)
  src, dst = str(root / "pt_inception_random.pth"), str(root / "flax")
  tr.save_state_dict(state, src)
  feature_nets.convert_inception(src, dst)
  return model, base, state, src, dst


@pytest.fixture(scope="module")
def net(reference):
  """The evaluator's sharded feature network (batch 2 after padding; compiled once at 299)."""
  return fid.InceptionNet(inception.load(reference[4]), batch_size=2)


@pytest.mark.slow
@pytest.mark.parametrize("size", [32, 64, 256])
def test_pool3_and_logits_match_pytorch_fid(reference, net, size):
  model, base, *_ = reference
  # Smooth colour fields, and an upscaled digit-like pattern, as "real-looking" images.
  images = tr.smooth_images(2, size, seed=size)
  want_pool3, want_logits = tr.inception_reference(model, base, images)
  got_pool3, got_logits = net(images)
  assert got_pool3.shape == (2, 2048) and got_logits.shape == (2, 1008)
  assert np.std(want_pool3) > 0.1  # the random network is not degenerate
  for got, want in ((got_pool3, want_pool3), (got_logits, want_logits)):
    rel = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert rel < 1e-4, rel


def test_resize_matches_torch_bilinear():
  import torch
  import torch.nn.functional as F
  for size in (16, 32, 300, 512):  # up- and down-sampling
    images = tr.smooth_images(1, size, seed=size)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    want = (2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1)
    got = np.asarray(jax.jit(inception.preprocess)(images)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)  # float32 rounding of [-1, 1]


def test_converter_uses_every_key_and_fills_every_param(reference):
  state = {k: v.numpy() for k, v in reference[2].items()}
  params, report = torch_weights.inception_from_state_dict(state)
  assert set(report["used"]) | set(report["dropped"]) == set(state)
  assert all(k.endswith("num_batches_tracked") for k in report["dropped"])
  leaves = jax.tree_util.tree_leaves(params)
  template = jax.tree_util.tree_leaves(inception.param_template())
  assert len(leaves) == len(template) == len(report["used"])
  assert [l.shape for l in leaves] == [t.shape for t in template]
  # Every key lands somewhere distinct: the converted values are the file's values.
  np.testing.assert_array_equal(params["fc"]["kernel"], state["fc.weight"].T)
  np.testing.assert_array_equal(params["Mixed_7c"]["branch_pool"]["var"],
                                state["Mixed_7c.branch_pool.bn.running_var"])


def test_wrong_layouts_are_clear_errors(reference, tmp_path):
  import torch
  state = reference[2]
  # A torchvision-style file (aux logits, no 1008-way fc) / a stray key / a missing key.
  extra = dict(state, **{"AuxLogits.fc.weight": torch.zeros(3, 3)})
  with pytest.raises(torch_weights.LayoutError, match="AuxLogits.fc.weight"):
    torch_weights.inception_from_state_dict({k: v.numpy() for k, v in extra.items()})
  missing = {k: v.numpy() for k, v in state.items() if k != "Mixed_6b.branch7x7_2.conv.weight"}
  with pytest.raises(torch_weights.LayoutError, match="Mixed_6b/branch7x7_2/kernel"):
    torch_weights.inception_from_state_dict(missing)
  wrong_shape = {k: v.numpy() for k, v in state.items()}
  wrong_shape["fc.weight"] = np.zeros((1000, 2048), np.float32)
  with pytest.raises(torch_weights.LayoutError, match="fc/kernel has shape"):
    torch_weights.inception_from_state_dict(wrong_shape)
  # Through the converter: an LPIPS heads file, a pickled non-state-dict, a missing file
  # (UserErrors: the CLI's one-line errors, tested in test_user_errors.py).
  heads = tmp_path / "heads.pth"
  torch.save({f"lin{k}.model.1.weight": torch.zeros(1, 64, 1, 1) for k in range(5)}, heads)
  junk = tmp_path / "junk.pth"
  junk.write_text("not a torch file")
  for src, message in ((heads, "not pytorch-fid's FID Inception layout"),
                       (junk, "not a weights-only PyTorch state dict"),
                       (tmp_path / "nope.pth", "does not exist")):
    with pytest.raises(UserError, match=re.escape(message)):
      feature_nets.convert_inception(str(src), str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")


def test_loading_a_wrong_directory_is_a_clear_error(reference, tmp_path):
  with pytest.raises(FileNotFoundError, match="python -m cm_jax.convert inception"):
    inception.load(str(tmp_path))
  from cm_jax.models import lpips
  with pytest.raises(ValueError, match="holds 'fid_inception_v3_2015' weights"):
    lpips.load.__wrapped__(reference[4])


def test_converter_refuses_to_replace_weights_unless_told(reference):
  _, _, _, src, dst = reference
  before = os.path.getmtime(os.path.join(dst, "params.msgpack"))
  with pytest.raises(UserError, match="already holds converted weights; pass --overwrite"):
    feature_nets.check_destination(dst, overwrite=False)
  assert os.path.getmtime(os.path.join(dst, "params.msgpack")) == before
  feature_nets.check_destination(dst, overwrite=True)
  feature_nets.convert_inception(src, dst)
