"""metrics.jsonl: one row per logged step, and a resumed run drops the rows a stopped run wrote
after its last checkpoint (so rewritten steps appear once)."""
import json

from cm_jax.train import metrics


def rows(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_rows_are_written_and_a_resume_drops_those_past_its_step(tmp_path):
  path = tmp_path / "metrics.jsonl"
  w = metrics.MetricWriter(str(tmp_path / "tb"), str(path))
  for step in (1, 2, 3, 4):
    w.write_scalars(step, {"loss": step / 10})
  w.close()
  assert [r["step"] for r in rows(path)] == [1, 2, 3, 4]
  assert rows(path)[2] == {"step": 3, "loss": 0.3}
  with open(path, "a") as f:
    f.write('{"step": 5, "loss"')  # a writer killed mid-line
  w = metrics.MetricWriter(str(tmp_path / "tb"), str(path), start_step=2)
  w.write_scalars(3, {"loss": 0.33})
  w.close()
  assert [(r["step"], r["loss"]) for r in rows(path)] == [(1, 0.1), (2, 0.2), (3, 0.33)]


def test_no_jsonl_path_writes_none(tmp_path):
  w = metrics.MetricWriter(str(tmp_path / "tb"))
  w.write_scalars(1, {"loss": 1.0})
  w.close()
  assert not list(tmp_path.glob("*.jsonl"))
