"""cm_jax against diffusers, an independent implementation of the released consistency models:
small random `UNet2DModel`s in both CM configurations (scale-shift + classes + several heads;
unconditional with the additive time embedding), imported from the diffusers folder and from a
.pt of the OpenAI key names, must give diffusers' consistency function, the pipeline's one- and
two-step samples, and the scheduler's levels."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from cm_jax import karras, models, sampling  # noqa: E402
from cm_jax.convert import adm_release, diffusers_unet, torch_weights  # noqa: E402

pytestmark = pytest.mark.slow
LEVELS = karras.NoiseLevels()
SIZE, HEAD = 16, 16

CONFIGS = {
    # ImageNet 64's layout, shrunk: FiLM time embedding, classes, attention of 4 heads of 16.
    "imagenet": dict(resnet_time_scale_shift="scale_shift", num_class_embeds=10),
    # LSUN 256's: additive time embedding, unconditional.
    "lsun": dict(resnet_time_scale_shift="default", num_class_embeds=None),
}


def cm_unet(name: str, seed: int = 0):
  """A UNet2DModel configured as the CM conversions are, every weight perturbed so that no path
  (zero-initialised or not) is silent."""
  torch.manual_seed(seed)
  unet = diffusers.UNet2DModel(
      sample_size=SIZE, in_channels=3, out_channels=3, layers_per_block=2,
      block_out_channels=(32, 64), attention_head_dim=HEAD, norm_num_groups=32,
      attn_norm_num_groups=32, down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
      up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D"), downsample_type="resnet",
      upsample_type="resnet", **CONFIGS[name])
  with torch.no_grad():
    for p in unet.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return unet.eval()


def scheduler(steps: int = 40):
  return diffusers.CMStochasticIterativeScheduler(num_train_timesteps=steps, sigma_min=0.002,
                                                  sigma_max=80.0, sigma_data=0.5)


def imported(unet, tmp_path, via: str):
  """cm_jax's (module, params) for the UNet, read from its diffusers folder or from a .pt."""
  unet.save_pretrained(tmp_path / "repo" / "unet")
  state, _ = diffusers_unet.read_unet_dir(str(tmp_path / "repo"), what="repo")
  if via == "pt":
    path = tmp_path / "model.pt"
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, path)
    state = torch_weights.load_torch_file(str(path))
  arch = adm_release.infer_architecture(state, what=via)
  params, report = adm_release.params_from_state_dict(state, arch, num_head_channels=HEAD,
                                                      what=via)
  # Every diffusers tensor is used: q, k, v (6 tensors) become one qkv (2) per attention.
  keys = unet.state_dict()
  assert report["tensors"] == len(keys) - 4 * sum(k.endswith("to_q.weight") for k in keys)
  return adm_release.adm_module(arch, num_head_channels=HEAD, resolution=SIZE), params


def cm_consistency(module, params, labels):
  net = models.make_net(module)
  bound = lambda x_in, noise: net(params, x_in, noise, labels, False, None)
  return jax.jit(lambda x, s: karras.consistency_function(bound, x, s, LEVELS))


def nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def labels_for(name):
  return np.array([3, 7], np.int32) if CONFIGS[name]["num_class_embeds"] else None


@pytest.mark.parametrize("via", ["diffusers", "pt"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_consistency_function_matches_diffusers(name, via, tmp_path):
  unet = cm_unet(name)
  module, params = imported(unet, tmp_path, via)
  labels = labels_for(name)
  f = cm_consistency(module, params, None if labels is None else jnp.asarray(labels))
  sched = scheduler()
  x = np.random.default_rng(1).standard_normal((2, SIZE, SIZE, 3)).astype(np.float32)
  for sigma in (0.002, 0.5, 2.0, 80.0):
    xs = x * sigma
    s = torch.tensor(sigma, dtype=torch.float32)
    scaled = nchw(xs) / (s**2 + 0.5**2) ** 0.5          # scale_model_input's c_in
    t = torch.tensor(sched.sigma_to_t(np.float64(sigma)), dtype=torch.float32)
    with torch.no_grad():
      out = unet(scaled, t, class_labels=None if labels is None else torch.from_numpy(labels)
                 .long()).sample
    c_skip, c_out = sched.get_scalings_for_boundary_condition(s)
    want = nhwc(c_skip * nchw(xs) + c_out * out)
    got = np.asarray(f(jnp.asarray(xs), jnp.full((2,), sigma, jnp.float32)))
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, atol=1e-4 * scale, rtol=0, err_msg=f"sigma={sigma}")
    # The network itself carries signal at this level (a silent path would hide a mismatch).
    assert float(np.abs(nhwc(c_out * out)).max()) > 1e-3 or sigma == 0.002


def test_scheduler_levels_are_the_released_ts():
  for ts, steps in (((0, 22, 39), 40), ((0, 106, 200), 201), ((0, 67, 150), 151),
                    ((0, 17, 39), 40)):
    sched = scheduler(steps)
    sched.set_timesteps(timesteps=[ts[1], 0])
    want = sampling.sigmas_from_ts(ts, steps, LEVELS)
    np.testing.assert_allclose(sched.sigmas.numpy()[:2], want, rtol=1e-6)
    # The network's time input for those levels: 1000 * 0.25 ln sigma.
    np.testing.assert_allclose(sched.timesteps.numpy(), 1000 * np.asarray(karras.c_noise(want)),
                               rtol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_one_and_two_step_samples_match_the_pipeline(name, tmp_path, monkeypatch):
  unet = cm_unet(name, seed=2)
  module, params = imported(unet, tmp_path, "diffusers")
  labels = labels_for(name)
  f = cm_consistency(module, params, None if labels is None else jnp.asarray(labels))
  key, indices, shape = jax.random.PRNGKey(5), jnp.arange(2), (SIZE, SIZE, 3)
  # The noise cm_jax's sampler draws at each step, handed to the pipeline.
  z = [np.asarray(sampling.per_sample_normal(jax.random.fold_in(key, i), indices, shape))
       for i in range(2)]
  handed = iter(())
  monkeypatch.setattr("diffusers.schedulers.scheduling_consistency_models.randn_tensor",
                      lambda shape, **kw: next(handed, torch.zeros(shape)))
  pipe = diffusers.ConsistencyModelPipeline(unet=unet, scheduler=scheduler())
  pipe.set_progress_bar_config(disable=True)
  torch_labels = None if labels is None else torch.from_numpy(labels).long()
  for plan, timesteps in (([80.0], None), (sampling.sigmas_from_ts((0, 22, 39), 40, LEVELS),
                                           [22, 0])):
    handed = iter([nchw(z[1])])
    with torch.no_grad():
      kw = dict(num_inference_steps=1) if timesteps is None else dict(timesteps=timesteps)
      images = pipe(batch_size=2, class_labels=torch_labels, latents=nchw(z[0]),
                    output_type="pt", **kw).images
    want = nhwc(images) * 2 - 1
    got = np.asarray(sampling.multistep_sample(f, key, indices, shape, plan, LEVELS, clip=True))
    np.testing.assert_allclose(got, want, atol=2e-4, err_msg=f"{len(plan)} steps")
    assert float(np.std(got)) > 0.05
