"""The three release formats -> imported workdirs (release_workdir): reading, the architecture
check against the config, and what the CLI prints."""
from __future__ import annotations

import collections
import os
import re
from typing import Optional

import ml_collections

from cm_jax.convert import adm_release, diffusers_unet, jcm_ncsnpp, release_workdir, torch_weights
from cm_jax.convert.release_workdir import ImportedWeights, Release
from cm_jax.errors import MissingPath, UserError

FORMATS = ("openai", "diffusers", "jcm")


def _check_adm_against_config(arch, config: ml_collections.ConfigDict, spec: str) -> None:
  """The file's ADM UNet (from its tensors) against the config's, field by field, so the
  message says which property differs rather than which tensor."""
  mc, dc = config.model, config.data
  if mc.name != "adm":
    raise UserError(f"The file is an ADM UNet but {spec} builds model.name={mc.name}; give an "
                    "ADM config (configs/imagenet64.py, configs/lsun256.py).")
  classes = int(dc.num_classes) if mc.class_conditional else 0
  pairs = {
      "data.channels": (arch.in_channels, int(dc.channels)),
      "model.channels": (arch.channels, int(mc.channels)),
      "model.channel_mult": (tuple(arch.channel_mult), tuple(int(m) for m in mc.channel_mult)),
      "model.num_res_blocks": (arch.num_res_blocks, int(mc.num_res_blocks)),
      "model.attn_resolutions": (tuple(sorted(arch.attn_resolutions(int(dc.resolution)))),
                                 tuple(sorted(int(r) for r in mc.attn_resolutions))),
      "model.use_scale_shift_norm": (bool(arch.use_scale_shift_norm),
                                     bool(mc.use_scale_shift_norm)),
      "model.resblock_updown": (bool(arch.resblock_updown), bool(mc.resblock_updown)),
      "classes": (arch.num_classes, classes),
  }
  differ = [f"{k} {got} in the file, {want} in the config"
            for k, (got, want) in pairs.items() if got != want]
  if differ:
    raise UserError(f"The file's network is not the one {spec} builds: {'; '.join(differ)}. "
                    "Give the config that describes it (--config=FILE.py:ARGS, or --family).")


def _mapping_summary(mapping) -> list[str]:
  """'input_blocks.4 (12 tensors) -> ADMResBlock_3, MultiHeadAttention_1' lines."""
  groups: dict[str, set] = collections.OrderedDict()
  counts: collections.Counter = collections.Counter()
  for src, dst in mapping:
    parts = str(src).replace("/", ".").split(".")
    head = ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]
    groups.setdefault(head, set()).add(str(dst).split("/")[0])
    counts[head] += 1
  natural = lambda name: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
  return [f"{head} ({counts[head]} tensors) -> {', '.join(sorted(dsts, key=natural))}"
          for head, dsts in sorted(groups.items(), key=lambda item: natural(item[0]))]


def _finish(dst: str, config, weights: ImportedWeights, record: dict, report: dict) -> dict:
  record = {**record, "tensors": int(report["tensors"]), "mapping": [list(map(str, p))
                                                                     for p in report["mapping"]]}
  return release_workdir.write_workdir(dst, config, weights, record)


def _prepare(src: str, dst: str, family: Optional[str], kind: Optional[str],
             config_spec: Optional[str], dtype: str) -> tuple[Release, str, ml_collections.ConfigDict]:
  """(release, config spec, config) of an import, after checking --out; the family's dataset
  file is the default config."""
  release_workdir.check_destination(dst)
  release = release_workdir.identify(src, family, kind, default_family=family)
  spec = config_spec or release_workdir.default_config_spec(release)
  return release, spec, release_workdir.release_config(release, spec, dtype)


def _finish_one_set(fmt: str, what: str, src: str, dst: str, release: Release, spec: str,
                    config, arch, params, report: dict) -> tuple[dict, list]:
  """The ADM releases ship one set of weights (the EMA the paper evaluates): params, EMA and
  target network alike."""
  weights = ImportedWeights(params=params, ema_params=params, target_params=None)
  record = _record(fmt, src, release, spec, config)
  record["weights"] = f"the {what}'s weights as params, EMA and target"
  return _finish(dst, config, weights, record, report), _lines(record, arch, report)


def _record(fmt: str, src: str, release: Release, spec: str, config) -> dict:
  two = release.two_step if release.kind != "edm" else None
  return {"format": fmt, "source": os.path.abspath(src), "sha256": release_workdir.file_digest(src),
          "family": release.family, "kind": release.kind, "distance": release.distance,
          "config_spec": spec, "dtype": str(config.model.dtype),
          "two_step_ts": None if two is None else {"ts": list(two[0]), "steps": two[1],
                                                   "sigma": float(config.sample.two_step_sigma)}}


def import_openai(src: str, dst: str, *, family: Optional[str] = None, kind: Optional[str] = None,
                  config_spec: Optional[str] = None, dtype: str = "float32") -> tuple[dict, list]:
  """A file of the OpenAI PyTorch release (`cd_imagenet64_l2.pt`, ...). Returns (record,
  lines to print)."""
  release, spec, config = _prepare(src, dst, family, kind, config_spec, dtype)
  state = torch_weights.load_torch_file(src)
  arch = adm_release.infer_architecture(state, what=src)
  _check_adm_against_config(arch, config, spec)
  params, report = adm_release.params_from_state_dict(
      state, arch, num_head_channels=int(config.model.num_head_channels), what=src)
  del state
  return _finish_one_set("openai", "file", src, dst, release, spec, config, arch, params, report)


def import_diffusers(src: str, dst: str, *, family: Optional[str] = None,
                     kind: Optional[str] = None, config_spec: Optional[str] = None,
                     dtype: str = "float32") -> tuple[dict, list]:
  """A diffusers `UNet2DModel` folder (the openai/diffusers-* hub repos, downloaded)."""
  release, spec, config = _prepare(src, dst, family, kind, config_spec, dtype)
  state, unet_config = diffusers_unet.read_unet_dir(src, what=src)
  arch = adm_release.infer_architecture(state, what=src)
  _check_adm_against_config(arch, config, spec)
  size = unet_config.get("sample_size")
  if size is not None and int(size) != int(config.data.resolution):
    raise UserError(f"{src}: the UNet's sample_size is {size} but {spec} has data.resolution="
                    f"{config.data.resolution}; give the config of that resolution.")
  head = int(unet_config.get("attention_head_dim") or config.model.num_head_channels)
  if head != int(config.model.num_head_channels):
    raise UserError(f"{src}: attention_head_dim {head} but {spec} has "
                    f"model.num_head_channels={config.model.num_head_channels}.")
  params, report = adm_release.params_from_state_dict(state, arch, num_head_channels=head,
                                                      what=src)
  del state
  return _finish_one_set("diffusers", "folder", src, dst, release, spec, config, arch, params,
                         report)


def import_jcm(src: str, dst: str, *, kind: Optional[str] = None,
               config_spec: Optional[str] = None, weights: str = "ema",
               dtype: str = "float32") -> tuple[dict, list]:
  """A `checkpoint_N` / `edm_cifar10_ema` file of the JAX CIFAR-10 release."""
  if not os.path.exists(src):
    raise MissingPath(f"--src={src} does not exist.")
  release, spec, config = _prepare(src, dst, "cifar10", kind, config_spec, dtype)
  if config.model.name != "ncsnpp":
    raise UserError(f"The JAX release's network is NCSN++ but {spec} builds "
                    f"model.name={config.model.name}; give an NCSN++ config (configs/cifar10.py).")
  trees = jcm_ncsnpp.import_state(jcm_ncsnpp.read_state(src, what=src), weights=weights,
                                  what=src)
  imported = ImportedWeights(params=trees["params"], ema_params=trees["ema_params"],
                             target_params=trees.get("target_params"))
  record = _record("jcm", src, release, spec, config)
  record.update(weights=f"evaluation EMA = the release's {'params_ema' if weights == 'ema' else 'params'}",
                source_step=trees.get("step"))
  report = trees["report"]
  return (_finish(dst, config, imported, record, report),
          _lines(record, None, report))


def _lines(record: dict, arch, report: dict) -> list[str]:
  kind = record["kind"].upper() + (f" ({record['distance']})" if record.get("distance") else "")
  lines = [f"Found: {record['format']} release, {kind} {record['family']}, "
           f"{report['parameters']:,} parameters in {report['tensors']} tensors."]
  if arch is not None:
    lines.append(f"Network (from the tensors): ADM UNet, {arch.channels} channels x "
                 f"{tuple(arch.channel_mult)}, {arch.num_res_blocks} blocks per level, attention "
                 f"at levels {tuple(arch.attention_levels)}, "
                 f"{'scale-shift norm' if arch.use_scale_shift_norm else 'additive time embedding'}"
                 f", {arch.num_classes or 'no'} classes.")
  lines.append("Tensors -> cm_jax parameters:")
  lines += ["  " + line for line in _mapping_summary(report["mapping"])]
  if record.get("two_step_ts"):
    t = record["two_step_ts"]
    lines.append(f"Two-step sampling: the release's ts {','.join(map(str, t['ts']))} of "
                 f"{t['steps']} (sigma {t['sigma']:.6g}), recorded as sample.two_step_sigma.")
  if record.get("source_step") is not None:
    lines.append(f"Release step {record['source_step']}; {record['weights']}.")
  return lines
