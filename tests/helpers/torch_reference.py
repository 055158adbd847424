"""Reference networks for the parity tests: pytorch-fid's FID Inception and the lpips package's
LPIPS, with RANDOM weights (the real ones cannot be downloaded here), written as .pth files in
the layouts the converters read.

Random weights are made "real-looking": BatchNorm statistics are set from a forward pass over
smooth images (so every layer sees roughly unit-scale activations, as trained weights give), then
perturbed, so a mistake in any layer, padding or pool shows in the output.
"""
from __future__ import annotations

import warnings

import numpy as np


def smooth_images(n: int, size: int, seed: int = 0) -> np.ndarray:
  """uint8 [n, size, size, 3]: low-frequency random colour fields (bilinear upsampled noise)."""
  import torch
  import torch.nn.functional as F
  g = torch.Generator().manual_seed(seed)
  coarse = torch.rand(n, 3, 5, 5, generator=g)
  x = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
  x = x + 0.05 * torch.randn(n, 3, size, size, generator=g)
  return np.clip(np.round(x.permute(0, 2, 3, 1).numpy() * 255), 0, 255).astype(np.uint8)


def fid_inception(seed: int = 0):
  """pytorch-fid's InceptionV3 (FID blocks, resize + normalise on) with random weights, and the
  underlying torchvision module (for its fc layer). pytorch-fid downloads its weights inside
  fid_inception_v3(); the download is replaced by the random state dict of the same module."""
  import torch
  from pytorch_fid import inception as pf

  torch.manual_seed(seed)
  holder = {}

  def fake_download(url, *args, **kwargs):
    return holder["state"]

  # Build once without weights to get the module, randomise it, then build pytorch-fid's wrapper
  # whose "download" returns exactly these weights.
  base = pf._inception_v3(num_classes=1008, aux_logits=False, weights=None)
  base.Mixed_5b = pf.FIDInceptionA(192, pool_features=32)
  base.Mixed_5c = pf.FIDInceptionA(256, pool_features=64)
  base.Mixed_5d = pf.FIDInceptionA(288, pool_features=64)
  base.Mixed_6b = pf.FIDInceptionC(768, channels_7x7=128)
  base.Mixed_6c = pf.FIDInceptionC(768, channels_7x7=160)
  base.Mixed_6d = pf.FIDInceptionC(768, channels_7x7=160)
  base.Mixed_6e = pf.FIDInceptionC(768, channels_7x7=192)
  base.Mixed_7b = pf.FIDInceptionE_1(1280)
  base.Mixed_7c = pf.FIDInceptionE_2(2048)
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in base.named_parameters():
      if p.ndim == 4:  # He-normal convs
        fan_in = p.shape[1] * p.shape[2] * p.shape[3]
        p.copy_(torch.randn(p.shape, generator=g) * np.sqrt(2.0 / fan_in))
      elif name.endswith("bn.weight"):
        p.copy_(0.5 + torch.rand(p.shape, generator=g))
      elif name.endswith("bn.bias"):
        p.copy_(0.2 * torch.randn(p.shape, generator=g))
      elif name == "fc.weight":
        p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(p.shape[1]))
      elif name == "fc.bias":
        p.copy_(0.1 * torch.randn(p.shape, generator=g))
    # BatchNorm statistics from the data (momentum None = exact average of the pass), perturbed.
    for m in base.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.reset_running_stats()
        m.momentum = None
    x = torch.from_numpy(smooth_images(2, 299, seed=seed + 1)).permute(0, 3, 1, 2).float()
    base.train()
    base(2 * x / 255 - 1)
    base.eval()
    for m in base.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.momentum = 0.1
        m.running_mean.add_(0.05 * torch.randn(m.running_mean.shape, generator=g))
        m.running_var.mul_(0.8 + 0.4 * torch.rand(m.running_var.shape, generator=g))
  holder["state"] = {k: v.clone() for k, v in base.state_dict().items()}
  original = pf.load_state_dict_from_url
  pf.load_state_dict_from_url = fake_download
  try:
    model = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
  finally:
    pf.load_state_dict_from_url = original
  return model, base, holder["state"]


def inception_reference(model, base, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(pool3 [N, 2048], logits [N, 1008]) of uint8 [N, H, W, 3] through pytorch-fid's model, fed
  as pytorch-fid's own loop feeds it (ToTensor: / 255, NCHW)."""
  import torch
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
  with torch.no_grad():
    pool3 = model(x)[0][:, :, 0, 0]
    logits = base.fc(pool3)
  return pool3.numpy().astype(np.float64), logits.numpy().astype(np.float64)


def save_state_dict(state: dict, path: str) -> None:
  import torch
  torch.save(state, path)


def lpips_reference(seed: int = 0):
  """lpips.LPIPS(net='vgg', v0.1) with a random VGG16 trunk and random non-negative heads, plus
  (torchvision-layout VGG16 state dict, heads state dict) for the converter."""
  import torch
  import torchvision
  import lpips as lpips_pkg

  torch.manual_seed(seed)
  with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
    warnings.simplefilter("ignore", UserWarning)
    model = lpips_pkg.LPIPS(net="vgg", version="0.1", pretrained=False, pnet_rand=True,
                            verbose=False).eval()
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for k in range(5):
      w = getattr(model, f"lin{k}").model[-1].weight
      w.copy_(torch.rand(w.shape, generator=g))
  # The full torchvision VGG16 whose features the LPIPS trunk holds (classifier included, as the
  # real torchvision file has it).
  vgg = torchvision.models.vgg16(weights=None)
  trunk = {}
  for slice_ in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4,
                 model.net.slice5):
    for name, p in slice_.named_parameters():
      trunk[f"features.{name}"] = p.detach().clone()
  state = vgg.state_dict()
  assert set(trunk) <= set(state)
  state.update(trunk)
  heads = {f"lin{k}.model.1.weight": getattr(model, f"lin{k}").model[-1].weight.detach().clone()
           for k in range(5)}
  return model, state, heads
