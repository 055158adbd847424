"""The CM PyTorch release's ADM state dicts -> cm_jax: the architecture read off the tensors, every
tensor of both released layouts placed exactly once, the inverse mapping, and clear errors for
what the release never used. Numerics against diffusers: test_convert_diffusers.py."""
import jax
import numpy as np
import pytest

from cm_jax import models
from cm_jax.convert import adm_release
from cm_jax.convert.torch_weights import LayoutError
from tests.helpers import adm_layout
from tests.test_ncsnpp import perturbed_params, small_config

SMALL = dict(image_size=16, model_channels=32, num_res_blocks=1, attention_resolutions=(2,),
             channel_mult=(1, 2), num_classes=10, use_scale_shift_norm=True)


def constant_state(shapes):
  """Each tensor filled with its own index + 1 (broadcast: no memory until converted)."""
  return {k: np.broadcast_to(np.float32(i + 1), s) for i, (k, s) in enumerate(shapes.items())}


@pytest.mark.parametrize("layout, tensors, parameters, arch", [
    (adm_layout.IMAGENET64, 541, 295_899_267,
     dict(channels=192, channel_mult=(1, 2, 3, 4), num_res_blocks=3, attention_levels=(1, 2, 3),
          use_scale_shift_norm=True, num_classes=1000)),
    (adm_layout.LSUN256, 566, 526_304_771,
     dict(channels=256, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
          attention_levels=(3, 4, 5), use_scale_shift_norm=False, num_classes=0)),
])
def test_released_layouts_fill_the_network_exactly(layout, tensors, parameters, arch):
  shapes = adm_layout.unet_shapes(**layout)
  assert len(shapes) == tensors
  assert sum(int(np.prod(s)) for s in shapes.values()) == parameters
  state = constant_state(shapes)
  found = adm_release.infer_architecture(state, "release")
  for field, want in arch.items():
    assert getattr(found, field) == want, field
  assert found.attn_resolutions(layout["image_size"]) == tuple(
      layout["image_size"] // ds for ds in sorted(layout["attention_resolutions"]))
  params, report = adm_release.params_from_state_dict(state, found, what="release")
  assert report["tensors"] == tensors and report["parameters"] == parameters
  assert sorted(src for src, _ in report["mapping"]) == sorted(shapes)
  dsts = [dst for _, dst in report["mapping"]]
  assert len(set(dsts)) == len(dsts)
  index = {k: i + 1 for i, k in enumerate(shapes)}
  leaves = {"/".join(p.key for p in path): v
            for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  assert len(leaves) == tensors
  for src, dst in report["mapping"]:
    leaf = leaves.pop(dst)
    assert leaf.min() == leaf.max() == index[src], (src, dst)
  assert not leaves
  del params


def small_arch_and_params():
  c = small_config("adm", use_scale_shift_norm=True, resblock_updown=True,
                   class_conditional=True)
  module = models.create_model(c.model, c.data)
  return module, perturbed_params(module, c.data)


def test_inverse_mapping_gives_guided_diffusions_names_and_round_trips():
  _, params = small_arch_and_params()
  shapes = adm_layout.unet_shapes(**SMALL)
  state = constant_state(shapes)
  arch = adm_release.infer_architecture(state, "small")
  back = adm_release.state_dict_from_params(params, arch)
  assert {k: v.shape for k, v in back.items()} == shapes
  again, _ = adm_release.params_from_state_dict(back, arch, num_head_channels=32)
  jax.tree.map(np.testing.assert_array_equal, again, jax.tree.map(np.asarray, params))


def bad(change):
  shapes = adm_layout.unet_shapes(**SMALL)
  state = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
  change(state)
  return state


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update({"out.2.weight": np.zeros((6, 32, 3, 3), np.float32),
                         "out.2.bias": np.zeros(6, np.float32)}), "learn_sigma"),
    (lambda s: [s.pop(k) for k in list(s) if k.startswith("input_blocks.3.")]
     + [s.update({"input_blocks.3.0.op.weight": np.zeros((32, 32, 3, 3), np.float32)})],
     "resblock_updown off"),
    (lambda s: s.update({"input_blocks.1.0.extra.weight": np.zeros(3, np.float32)}),
     "unknown tensor input_blocks.1.0.extra.weight"),
    (lambda s: s.pop("input_blocks.1.0.emb_layers.1.bias"), "nothing in the file"),
    (lambda s: s.update({"middle_block.1.qkv.weight": np.zeros((96, 64, 1), np.float32)}),
     "has shape"),
    (lambda s: [s.pop(k) for k in list(s) if k.startswith("output_blocks.")],
     "output_blocks are missing"),
])
def test_what_the_release_never_used_is_a_clear_error(change, message):
  state = bad(change)
  with pytest.raises(LayoutError, match=message):
    arch = adm_release.infer_architecture(state, "f.pt")
    adm_release.params_from_state_dict(state, arch, num_head_channels=32, what="f.pt")


def test_a_state_dict_of_another_network_names_the_layout():
  with pytest.raises(LayoutError, match="not an ADM UNet state dict"):
    adm_release.infer_architecture({"conv1.weight": np.zeros((3, 3, 3, 3))}, "resnet.pt")
