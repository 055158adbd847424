"""The released models end to end through the real CLIs: `cm_jax.convert diffusers / openai / jcm`
-> `cm_jax.sample` (1 step, 2 steps at the release's ts) -> `cm_jax.evaluate` on the sample file
-> `cm_jax.edit --task=inpaint`; an imported EDM model as the teacher of a CD run and as the start
of an ECT run; bad inputs refused with nothing written.

Small randomly initialised networks in the runlocal shapes of the paper configs stand in for the
released files (nothing is downloaded); their numerics against diffusers are tests/test_convert_diffusers.py.
"""
import json
import os

import flax.serialization
import jax
import numpy as np
import pytest

from cm_jax import checkpoint, editing
from cm_jax.convert import diffusers_unet, jcm_ncsnpp
from cm_jax.data import fake
from cm_jax.train.experiment import Experiment
from cm_jax.train.restore import restore_state
from configs import cifar10
from tests.cli_runner import run_cli, sample, snapshot, train
from tests.test_evaluate_cli import random_inception

pytestmark = pytest.mark.slow

IN64_CD = "configs/imagenet64.py:method=cd,variant=release,runlocal"
IN64_EDM = "configs/imagenet64.py:method=edm,runlocal"


def runlocal_unet(seed: int):
  """The imagenet64 runlocal ADM network as a diffusers UNet2DModel: 32 channels, one level of
  one block with attention (heads of 32), scale-shift norm, 1000 classes; the zero-initialised
  output convolutions perturbed so every path carries signal."""
  import torch
  from diffusers import UNet2DModel
  torch.manual_seed(seed)
  unet = UNet2DModel(
      sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
      block_out_channels=(32,), down_block_types=("AttnDownBlock2D",),
      up_block_types=("AttnUpBlock2D",), attention_head_dim=32, norm_num_groups=32,
      attn_norm_num_groups=32, norm_eps=1e-5, resnet_time_scale_shift="scale_shift", num_class_embeds=1000,
      downsample_type="resnet", upsample_type="resnet", add_attention=True)
  with torch.no_grad():
    for p in unet.parameters():
      if not p.abs().sum():
        p.normal_(0, 0.05)
  return unet


def convert(*args, check=True):
  return run_cli("cm_jax.convert", *args, check=check)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  root = tmp_path_factory.mktemp("release")
  hub = root / "diffusers-cd_imagenet64_l2"
  runlocal_unet(0).save_pretrained(str(hub / "unet"))
  wd = root / "in64_cd_l2"
  out = convert("diffusers", f"--src={hub}", f"--out={wd}", f"--config={IN64_CD}")
  return root, hub, wd, out


def test_convert_prints_what_it_found_and_writes_a_workdir(imported):
  _, hub, wd, out = imported
  assert "Found: diffusers release, CD (l2) imagenet64" in out.stdout, out.stdout
  assert "Network (from the tensors): ADM UNet, 32 channels x (1,)" in out.stdout
  assert "Two-step sampling: the release's ts 0,22,39 of 40" in out.stdout
  assert "input_blocks.0" in out.stdout and "label_emb" in out.stdout
  record = json.loads((wd / "release.json").read_text())
  assert record["format"] == "diffusers" and record["kind"] == "cd" and len(record["sha256"]) == 64
  assert record["tensors"] == len(record["mapping"])
  config = checkpoint.load_config(str(wd))
  assert config.method == "cd" and config.model.dtype == "float32"
  assert checkpoint.finished_steps(str(wd)) == [int(config.train.num_steps)]
  # A CD workdir carries a target network: the imported weights, as are params and EMA.
  _, state, meta = restore_state(str(wd), config)
  assert meta["imported"]["source"] == str(hub)
  for a, b, c in zip(*(jax.tree.leaves(t) for t in (state.params, state.ema_params,
                                                     state.target_params))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))


def test_sample_evaluate_and_edit_the_imported_workdir(imported, tmp_path):
  _, _, wd, _ = imported
  one = sample(wd, "--steps=1", "--num_samples=6", f"--out={tmp_path}/s1.npz")
  two = sample(wd, "--steps=2", "--num_samples=6", f"--out={tmp_path}/s2.npz")
  config = checkpoint.load_config(str(wd))
  # The release's level: index 22 of a descending 40-level Karras grid.
  assert f"{config.sample.two_step_sigma:.4g}" in two.stdout + two.stderr, two.stdout
  s1, s2 = (np.load(tmp_path / f"s{k}.npz") for k in (1, 2))
  assert s1["arr_0"].shape == (6, 8, 8, 3) and s1["arr_0"].dtype == np.uint8
  assert not np.array_equal(s1["arr_0"], s2["arr_0"])
  assert "arr_1" in s1  # class-conditional: the labels sampled under
  del one

  weights = random_inception(str(tmp_path / "inception"))
  rng = np.random.default_rng(0)
  a = rng.standard_normal((2048, 2048)) / 45.0
  np.savez(tmp_path / "ref.npz", mu=rng.standard_normal(2048) * 0.1, sigma=a @ a.T)
  run_cli("cm_jax.evaluate", f"--samples={tmp_path}/s1.npz", f"--ref={tmp_path}/ref.npz",
          f"--inception_weights={weights}", f"--json={tmp_path}/fid.json", "--batch_size=8")
  assert np.isfinite(json.loads((tmp_path / "fid.json").read_text())["fid"])

  out = run_cli("cm_jax.edit", f"--workdir={wd}", "--task=inpaint",
                f"--images={tmp_path}/s1.npz", f"--out={tmp_path}/inpaint.npz")
  assert "Wrote 6 inpaint results" in out.stdout
  edited = np.load(tmp_path / "inpaint.npz")["arr_0"]
  keep = np.broadcast_to(editing.center_mask(8, 8) == 0, s1["arr_0"].shape)
  np.testing.assert_array_equal(edited[keep], s1["arr_0"][keep])


def test_imported_edm_pt_teaches_a_cd_run(imported, tmp_path):
  """An EDM teacher from the PyTorch release's layout (.pt of OpenAI keys), imported in float32,
  distils a bfloat16-compute CD student (runlocal, fake ImageNet data)."""
  import torch
  root, hub, _, _ = imported
  state, _ = diffusers_unet.read_unet_dir(str(hub), what="test")
  pt = tmp_path / "edm_imagenet64_ema.pt"
  torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, pt)
  teacher = tmp_path / "edm"
  out = convert("openai", f"--src={pt}", f"--out={teacher}", f"--config={IN64_EDM}")
  assert "Found: openai release, EDM imagenet64" in out.stdout, out.stdout
  assert checkpoint.load_config(str(teacher)).method == "edm"
  sample(teacher, "--num_samples=2", f"--out={tmp_path}/heun.npz")  # the EDM ODE sampler
  data_dir = str(tmp_path / "tfds")
  fake.prepare_fake("imagenet_resized/64x64", data_dir, num_examples=16)
  out = train(tmp_path / "cd", "configs/imagenet64.py:method=cd,runlocal",
              f"--config.teacher={teacher}", f"--config.data.data_dir={data_dir}",
              "--config.train.num_steps=2", "--config.eval.report_at_end=False")
  assert f"Teacher: {teacher}" in out.stdout + out.stderr
  assert checkpoint.has_checkpoint(str(tmp_path / "cd"))


def jcm_edm_file(path, seed: int = 0):
  """The JAX CIFAR-10 release's single-file EDM teacher layout, from a cm_jax NCSN++ init of the
  runlocal CIFAR-10 network (what jcm_ncsnpp.release_from_ncsnpp renders)."""
  config = cifar10.get_config("method=edm,runlocal")
  exp = Experiment.from_config(config)
  params = jax.tree.map(np.asarray, exp.init_state(seed).ema_params)
  path.write_bytes(flax.serialization.msgpack_serialize(
      jcm_ncsnpp.release_state(jcm_ncsnpp.release_from_ncsnpp(params), edm_file=True)))
  return params


def test_imported_jcm_edm_starts_an_ect_run(tmp_path):
  src = tmp_path / "edm_cifar10_ema"
  params = jcm_edm_file(src)
  wd = tmp_path / "c10_edm"
  out = convert("jcm", f"--src={src}", f"--out={wd}",
                "--config=configs/cifar10.py:method=edm,runlocal")
  assert "Found: jcm release, EDM cifar10" in out.stdout, out.stdout
  _, state, _ = restore_state(str(wd), checkpoint.load_config(str(wd)))
  for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), b)
  data_dir = str(tmp_path / "tfds")
  fake.prepare_fake("cifar10", data_dir, num_examples=16)
  out = train(tmp_path / "ect", "configs/cifar10.py:method=ect,runlocal",
              f"--config.teacher={wd}", f"--config.data.data_dir={data_dir}",
              "--config.train.num_steps=2", "--config.eval.report_at_end=False")
  assert f"Teacher: {wd}" in out.stdout + out.stderr


def test_bad_inputs_are_one_line_errors_and_write_nothing(imported, tmp_path):
  root, hub, wd, _ = imported
  before = snapshot(wd)
  cases = []
  # --out already holds checkpoints.
  cases.append((["diffusers", f"--src={hub}", f"--out={wd}", f"--config={IN64_CD}"],
                "holds checkpoints", wd))
  # Not a state dict; a truncated file.
  junk = tmp_path / "cd_imagenet64_l2.pt"
  junk.write_bytes(b"not a torch file at all")
  cases.append((["openai", f"--src={junk}", f"--out={tmp_path}/a", f"--config={IN64_CD}"],
                "not a weights-only PyTorch state dict", tmp_path / "a"))
  # A diffusers folder without unet/.
  empty = tmp_path / "diffusers-empty"
  empty.mkdir()
  cases.append((["diffusers", f"--src={empty}", f"--out={tmp_path}/b", f"--config={IN64_CD}",
                 "--kind=cd", "--family=imagenet64"], "unet", tmp_path / "b"))
  # The network of another config: the full-size ImageNet 64 one.
  cases.append((["diffusers", f"--src={hub}", f"--out={tmp_path}/c"],
                "network is not the one", tmp_path / "c"))
  # Not a flax msgpack State; a msgpack without params.
  cases.append((["jcm", f"--src={junk}", f"--out={tmp_path}/d", "--kind=cd"],
                "not a flax msgpack checkpoint", tmp_path / "d"))
  no_params = tmp_path / "checkpoint_3"
  no_params.write_bytes(flax.serialization.msgpack_serialize({"step": 3, "rng_state": 0}))
  cases.append((["jcm", f"--src={no_params}", f"--out={tmp_path}/e", "--kind=ct"],
                "holds no params or params_ema", tmp_path / "e"))
  # A state dict of another architecture: learn_sigma's 6 output channels.
  import torch
  state, _ = diffusers_unet.read_unet_dir(str(hub), what="test")
  state["out.2.weight"] = np.concatenate([state["out.2.weight"]] * 2)
  state["out.2.bias"] = np.concatenate([state["out.2.bias"]] * 2)
  (tmp_path / "sigma").mkdir()
  sigma = tmp_path / "sigma" / "cd_imagenet64_l2.pt"
  torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, sigma)
  cases.append((["openai", f"--src={sigma}", f"--out={tmp_path}/f", f"--config={IN64_CD}"],
                "learn_sigma", tmp_path / "f"))
  # A truncated download of a real state dict.
  (tmp_path / "cut").mkdir()
  cut = tmp_path / "cut" / "cd_imagenet64_l2.pt"
  cut.write_bytes(sigma.read_bytes()[: sigma.stat().st_size // 2])
  cases.append((["openai", f"--src={cut}", f"--out={tmp_path}/g", f"--config={IN64_CD}"],
                "not a weights-only PyTorch state dict", tmp_path / "g"))
  # A flag of another command (openai/diffusers' --family), refused rather than ignored.
  cases.append((["jcm", f"--src={junk}", f"--out={tmp_path}/h", "--family=imagenet64"],
                "--family: not read by `convert jcm`", tmp_path / "h"))
  for args, message, dst in cases:
    out = convert(*args, check=False)
    assert out.returncode == 2, (args, out.stderr[-2000:])
    lines = [l for l in out.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], (args, out.stderr[-2000:])
    assert "Traceback" not in out.stderr
    if dst != wd:
      assert not os.path.exists(dst) or not os.listdir(dst), (args, os.listdir(dst))
  assert snapshot(wd) == before
