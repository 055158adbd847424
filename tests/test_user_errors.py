"""Every ordinary mistake is one `error:` line with exit status 2, names what to fix, never
advises unpickling, and writes nothing; a genuine bug keeps its traceback."""
import os

import numpy as np
import pytest

from cm_jax import cli
from cm_jax.errors import UserError
from tests.cli_runner import run_cli, train

# Trains or launches processes: the whole suite, not the fast tier (-m "not slow").
pytestmark = pytest.mark.slow

ICT = "configs/digits.py:method=ict,runlocal"
UNWRITABLE = "/sys/kernel"  # sysfs: no new entries, not even for root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  root = tmp_path_factory.mktemp("inputs")
  workdir = root / "ict"
  train(workdir, ICT, "--config.eval.report_at_end=False")
  rng = np.random.default_rng(0)
  (root / "junk.npz").write_bytes(rng.bytes(500))
  (root / "junk.pth").write_bytes(rng.bytes(500))
  (root / "pngs").mkdir()
  (root / "pngs" / "a.png").write_bytes(rng.bytes(500))
  (root / "a_file").write_text("not a directory")
  (root / "taken.npz").mkdir()
  return root, workdir


def _probes(root, w):
  out = f"--out={root}/new/s.npz"
  return [
      (["cm_jax.train", "--config=configs/nope.py", f"--workdir={root}/n"],
       "the config file configs/nope.py does not exist"),
      (["cm_jax.train", f"--config={ICT}", f"--workdir={root}/a_file"], "is a file"),
      (["cm_jax.train", f"--config={ICT}", f"--workdir={UNWRITABLE}/run"], "cannot write in"),
      (["cm_jax.train", f"--config={ICT}", "--workdir=s3://bucket/run"], "s3:// scheme is not served"),
      (["cm_jax.train", f"--config={ICT}"], "--workdir is required"),
      (["cm_jax.sample", f"--workdir={w}", f"--out={UNWRITABLE}/x.npz"], "cannot write in"),
      (["cm_jax.sample", f"--workdir={w}", f"--out={root}/taken.npz"], "existing directory"),
      (["cm_jax.sample", f"--workdir={w}", out, "--steps=0"], "--steps=0: give at least 1"),
      (["cm_jax.sample", f"--workdir={w}", out, "--steps=-1"], "--steps=-1: give at least 1"),
      (["cm_jax.sample", f"--workdir={w}", out, "--batch_size=0"], "--batch_size=0"),
      (["cm_jax.sample", f"--workdir={w}", out, "--ts=0,17,11"], "must increase strictly"),
      (["cm_jax.sample", f"--workdir={w}", out, "--sigmas=80,abc"], "--sigmas: 'abc' is not"),
      (["cm_jax.sample", f"--workdir={root}/a_file", out], "is a file, not a training workdir"),
      (["cm_jax.edit", f"--workdir={w}", "--task=denoise", "--noise_sigma=0.5",
        f"--images={root}/junk.npz", f"--out={root}/new/e.npz"], "is not a readable .npz archive"),
      (["cm_jax.edit", f"--workdir={w}", "--task=denoise", "--noise_sigma=0.5",
        f"--images={root}/pngs", f"--out={root}/new/e.npz"], "Cannot read image"),
      (["cm_jax.edit", f"--workdir={w}", "--task=denoise", f"--images={root}/pngs",
        f"--out={root}/new/e.npz"], "--task=denoise needs --noise_sigma"),
      (["cm_jax.convert", "inception", f"--src={root}/junk.pth", f"--out={root}/new/c"],
       "is not a weights-only PyTorch state dict"),
      (["cm_jax.convert", "inception", f"--src={root}/junk.pth", f"--out={root}/a_file"],
       "is a file"),
      (["cm_jax.convert", "inception", f"--src={root}/junk.pth", f"--out={w}"],
       "already holds other files"),
  ]


def test_each_mistake_is_one_clear_line_with_status_2_and_nothing_written(inputs):
  root, workdir = inputs
  before = sorted(os.listdir(root)), sorted(os.listdir(workdir))
  failures = []
  for args, fragment in _probes(root, workdir):
    out = run_cli(*args, check=False)
    err = out.stderr
    ok = (out.returncode == 2 and fragment in err and "Traceback" not in err
          and "allow_pickle" not in err and "weights_only=False" not in err)
    if not ok:
      failures.append(f"{' '.join(args)} -> rc {out.returncode}: {err[-600:]}")
  assert not failures, "\n\n".join(failures)
  assert (sorted(os.listdir(root)), sorted(os.listdir(workdir))) == before


def test_damaged_latest_checkpoint_names_the_step_and_the_way_out(inputs, tmp_path):
  import shutil
  root, workdir = inputs
  damaged = tmp_path / "damaged"
  shutil.copytree(workdir, damaged)
  data = sorted(p for p in (damaged / "checkpoints" / "4" / "state").rglob("*") if p.is_file()
                and "ocdbt.process_0" in str(p) and p.stat().st_size > 100)
  for p in data:
    p.write_bytes(p.read_bytes()[:10])
  out = run_cli("cm_jax.sample", f"--workdir={damaged}", f"--out={tmp_path}/s.npz", check=False)
  assert out.returncode == 2, out.stderr[-2000:]
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "Could not restore step 4" in lines[0], out.stderr[-2000:]
  assert "Other checkpoints: [2]; pick one with --checkpoint=STEP" in lines[0]
  out = run_cli("cm_jax.sample", f"--workdir={damaged}", f"--out={tmp_path}/s.npz",
                "--checkpoint=2")
  assert "checkpoint step 2" in out.stdout


def test_user_error_exits_2_and_a_bug_keeps_its_traceback():
  with pytest.raises(SystemExit) as e:
    with cli.user_errors_exit():
      raise UserError("a wrong flag")
  assert e.value.code == cli.EXIT_USER_ERROR
  with pytest.raises(ValueError, match="inside a library"):  # not a UserError: propagates
    with cli.user_errors_exit():
      raise ValueError("inside a library")


def test_print_config_shows_the_resolved_config_methods_and_datasets_and_writes_nothing(tmp_path):
  out = run_cli("cm_jax.train", f"--config={ICT}", "--config.train.num_steps=7",
                "--print_config", f"--workdir={tmp_path}/w")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "num_steps: 7" in out.stdout
  assert "scd " in out.stdout and "teacher: required method=trigflow" in out.stdout
  assert "digits" in out.stdout.split("# Datasets")[1]
  assert not (tmp_path / "w").exists()
