"""A workdir written before a config key existed stays usable: the key takes its base default."""
import json

import pytest

from cm_jax import checkpoint
from configs import digits


def _write_old_workdir(tmp_path, drop=("model.dtype", "model.num_head_channels")):
  config = digits.get_config("method=ict,runlocal")
  raw = json.loads(config.to_json_best_effort())
  for key in drop:
    group, name = key.split(".")
    del raw[group][name]
  (tmp_path / checkpoint.CONFIG_FILE).write_text(json.dumps(raw))
  (tmp_path / checkpoint.CHECKPOINT_DIR / "4").mkdir(parents=True, exist_ok=True)
  return config


def test_old_config_loads_with_defaults_for_new_keys(tmp_path):
  _write_old_workdir(tmp_path)
  loaded = checkpoint.load_config(str(tmp_path))
  assert loaded.model.dtype == "float32"
  assert loaded.model.num_head_channels == 64
  assert loaded.model.channel_mult == (1, 2)


def test_resume_accepts_new_keys_at_default_but_not_a_changed_value(tmp_path):
  config = _write_old_workdir(tmp_path)
  checkpoint.check_or_write_config(str(tmp_path), config)  # same run: accepted
  assert json.loads((tmp_path / checkpoint.CONFIG_FILE).read_text())["model"]["dtype"] == "float32"
  _write_old_workdir(tmp_path)
  config.model.dtype = "bfloat16"
  with pytest.raises(checkpoint.CheckpointError, match="model.dtype"):
    checkpoint.check_or_write_config(str(tmp_path), config)


def test_resume_may_change_remat(tmp_path):
  """model.remat trades memory for recomputation with the same results: a resume may change it
  (a workdir from before the key existed counts as 'none')."""
  config = _write_old_workdir(tmp_path, drop=("model.remat",))
  config.model.remat = "full"
  checkpoint.check_or_write_config(str(tmp_path), config)
  assert json.loads((tmp_path / checkpoint.CONFIG_FILE).read_text())["model"]["remat"] == "full"
