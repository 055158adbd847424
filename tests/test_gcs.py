"""gs:// paths against a local GCS emulator (tests/helpers/gcs_emulator.py): the path layer's
object-store forms (atomic write, append, exclusive create, move, listings), the workdir lock,
Orbax's commit marker, and the training, sampling and evaluation CLIs on a gs:// workdir."""
import io
import json
import os

import numpy as np
import pytest

from cm_jax import checkpoint, files, images, storage, workdir_lock
from cm_jax.errors import UserError, WorkdirBusy
from tests import REPO_ROOT
from tests.cli_runner import restore, run_cli, train
from tests.helpers.gcs_emulator import upload_tree


def test_path_layer_object_store_forms(gcs):
  root = f"{gcs}/layer"
  files.write_json_atomically(storage.join(root, "a", "x.json"), {"k": 1})
  assert json.loads(storage.read_text(f"{root}/a/x.json")) == {"k": 1}
  assert storage.isdir(f"{root}/a") and storage.isfile(f"{root}/a/x.json")
  assert not storage.exists(f"{root}/nothing") and storage.listdir(f"{root}/a") == ["x.json"]
  with pytest.raises(FileNotFoundError):
    storage.listdir(f"{root}/nothing")
  # No append on an object store: both lines are kept all the same.
  storage.append_text(f"{root}/r.jsonl", "1\n")
  storage.append_text(f"{root}/r.jsonl", "2\n")
  assert storage.read_text(f"{root}/r.jsonl") == "1\n2\n"
  # The exclusive create has one winner.
  assert storage.create_exclusive(f"{root}/lock", b"first")
  assert not storage.create_exclusive(f"{root}/lock", b"second")
  assert storage.read_bytes(f"{root}/lock") == b"first"
  with pytest.raises(FileExistsError):  # the precondition itself, for a creator that raced past
    storage._gcs().pipe_file(f"{root}/lock", b"late", mode="create")  # the exists() check
  storage.move_tree(f"{root}/a", f"{root}/b")
  assert not storage.exists(f"{root}/a/x.json") and storage.listdir(f"{root}/b") == ["x.json"]
  files.write_npz_atomically(f"{root}/s.npz", arr_0=np.arange(6, dtype=np.uint8))
  with files.open_npz(f"{root}/s.npz", "samples") as d:
    np.testing.assert_array_equal(d["arr_0"], np.arange(6))
  files.check_output_dir(f"{root}/out", "--workdir")
  files.check_output_file(f"{root}/out/s.npz", "--out", ".npz")
  with pytest.raises(UserError, match="is an object, not a folder"):
    files.check_output_dir(f"{root}/lock", "--workdir")
  with pytest.raises(UserError, match="cannot write there"):
    files.check_output_dir("gs://no-such-bucket/run", "--workdir")
  with pytest.raises(UserError, match="names no bucket"):
    storage.check("gs:///run", "--workdir")
  with pytest.raises(UserError, match="s3:// scheme is not served"):
    files.check_output_dir("s3://b/run", "--workdir")



def test_sample_files_image_folders_and_weights_are_read_from_gs(gcs, tmp_path):
  """What evaluate (--samples, --ref), edit (--images, --mask) and the converted weights
  (--inception_weights) read, from the bucket: the same arrays as from a local copy."""
  from cm_jax import weight_store
  from cm_jax.errors import MissingPath
  from cm_jax.evaluation import fid
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
  files.write_npz_atomically(f"{gcs}/in/samples.npz", arr_0=rgb)
  sample_file = fid.load_sample_file(f"{gcs}/in/samples.npz", channels=3)
  assert len(sample_file) == 5
  np.testing.assert_array_equal(np.concatenate(list(sample_file.batches(2))), rgb)
  gray = rng.integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
  os.makedirs(tmp_path / "png")
  for i, image in enumerate(gray):
    images.save_png(str(tmp_path / "png" / f"{i}.png"), image)
    storage.upload(str(tmp_path / "png" / f"{i}.png"), f"{gcs}/in/png/{i}.png")
  np.testing.assert_array_equal(images.load_images(f"{gcs}/in/png", 1), gray)
  np.testing.assert_array_equal(images.load_images(str(tmp_path / "png"), 1), gray)
  params = {"dense": {"kernel": rng.standard_normal((3, 2)).astype(np.float32)}}
  weight_store.save(str(tmp_path / "weights"), params, {"kind": "test"})
  upload_tree(str(tmp_path / "weights"), f"{gcs}/in/weights")
  loaded, meta = weight_store.load(f"{gcs}/in/weights", "test", params, "convert it")
  assert meta["kind"] == "test"
  np.testing.assert_array_equal(loaded["dense"]["kernel"], params["dense"]["kernel"])
  with pytest.raises(MissingPath):
    fid.load_sample_file(f"{gcs}/in/none.npz")
  with pytest.raises(MissingPath, match="convert it"):
    weight_store.load(f"{gcs}/in/none", "test", params, "convert it")


def test_datasets_are_read_from_gs(gcs, tmp_path):
  """A TFDS data_dir and an image folder in the bucket give the splits their local copies give;
  a data_dir without the dataset says to build it locally and upload it (array_record cannot
  write to object storage), and writes nothing."""
  from PIL import Image
  from cm_jax import data
  from cm_jax.data import fake
  from cm_jax.errors import MissingPath
  from configs import cifar10, digits
  local = str(tmp_path / "tfds")
  data.prepare_digits(local)
  fake.prepare_fake("cifar10", local, num_examples=8)  # a catalogue dataset: PNG-encoded
  upload_tree(local, f"{gcs}/tfds")
  for config in (digits.get_config("method=ict,runlocal").data,
                 cifar10.get_config("method=ect,runlocal").data):
    config.data_dir = local
    want = data.load_split(config, "test")
    config.data_dir = f"{gcs}/tfds"
    got = data.load_split(config, "test")
    for k in ("image", "label"):
      np.testing.assert_array_equal(got[k], want[k])
  config = digits.get_config("method=ict,runlocal").data
  config.data_dir = f"{gcs}/no-data"
  with pytest.raises(MissingPath, match=r"(?s)python -m cm_jax\.data\.digits .*gcloud storage cp"):
    data.load_split(config, "test")
  assert not storage.exists(f"{gcs}/no-data")

  rng = np.random.default_rng(1)
  for rel in ("cats/a.png", "cats/deep/b.jpg", "dogs/c.png", ".hidden/d.png", "dogs/e.txt"):
    os.makedirs(os.path.dirname(tmp_path / "folder" / rel), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(
        tmp_path / "folder" / rel, format="PNG")
  upload_tree(str(tmp_path / "folder"), f"{gcs}/folder")
  splits = []
  for root in (str(tmp_path / "folder"), f"{gcs}/folder"):
    config = digits.get_config("method=ict,runlocal").data
    config.update(name=f"image_folder:{root}", channels=3, num_classes=2, resolution=8)
    assert data.sources.open_source(config, "train").files == [
        "cats/a.png", "cats/deep/b.jpg", "dogs/c.png"]
    splits.append(data.load_split(config, "train"))
  for k in ("image", "label"):
    np.testing.assert_array_equal(splits[0][k], splits[1][k])
  np.testing.assert_array_equal(splits[1]["label"], [0, 0, 1])


def test_launcher_log_upload(gcs, tmp_path):
  log = tmp_path / "worker-0.log"
  log.write_text("trained\n")
  storage.put(str(log), f"{gcs}/logs/worker-0.log")   # `python -m cm_jax.storage put` does
  assert storage.read_text(f"{gcs}/logs/worker-0.log") == "trained\n"
  with pytest.raises(UserError, match="is not a file"):
    storage.put(str(tmp_path / "missing.log"), f"{gcs}/logs/worker-1.log")


def test_workdir_lock_on_gcs(gcs):
  workdir = f"{gcs}/locked"
  first = workdir_lock.WorkdirLock(workdir)
  first.acquire()
  with pytest.raises(WorkdirBusy, match="is in use by pid"):
    workdir_lock.WorkdirLock(workdir).acquire()
  first.release()
  assert not storage.exists(storage.join(workdir, workdir_lock.LOCK_FILE))
  # A lock another host stopped refreshing is taken over.
  dead = {"host": "gone-host", "pid": 1, "started": "-", "command": "x", "token": "t0"}
  storage.write_bytes_remote(storage.join(workdir, workdir_lock.LOCK_FILE),
                             json.dumps(dead).encode())
  taker = workdir_lock.WorkdirLock(workdir, stale_s=0.0)
  taker.acquire()
  held = json.loads(storage.read_text(storage.join(workdir, workdir_lock.LOCK_FILE)))
  assert held["token"] == taker.record["token"]
  taker.release()


def test_an_uncommitted_step_is_not_a_checkpoint(gcs):
  workdir = f"{gcs}/steps"
  ckpts = storage.join(workdir, checkpoint.CHECKPOINT_DIR)
  storage.write_bytes_remote(f"{ckpts}/2/{checkpoint.COMMIT_MARKER}", b"")
  storage.write_bytes_remote(f"{ckpts}/2/state/x", b"1")
  storage.write_bytes_remote(f"{ckpts}/4/state/x", b"1")  # a save still being written
  assert checkpoint.finished_steps(workdir) == [2]


def _objects(prefix: str) -> list[str]:
  fs = storage._fs(prefix)
  return sorted(p[len(prefix[len("gs://"):]) + 1:] for p in fs.find(prefix))


@pytest.mark.slow
def test_train_resume_sample_evaluate_on_a_gs_workdir(gcs, tmp_path):
  config = "configs/digits.py:method=ict,runlocal"
  workdir = f"{gcs}/run"
  train(tmp_path / "local", config)
  train(workdir, config)
  names = _objects(workdir)
  for name in ("config.json", "metrics.jsonl", "checkpoints/2/commit_success.txt",
               "checkpoints/4/commit_success.txt", "samples/grid_step0000004.png",
               "eval/digits_quality_step0000004.json"):
    assert name in names, names
  assert any(n.startswith("tensorboard/events.out.tfevents.") for n in names), names
  assert "lock.json" not in names

  # A damaged newest step: the same command falls back to step 2, moves step 4 aside in the
  # bucket, trains on, and ends where the uninterrupted local run ended.
  storage.remove(f"{workdir}/checkpoints/4/state/manifest.ocdbt")
  out = train(workdir, config)
  assert "damaged step(s) 4" in out.stderr, out.stderr[-3000:]
  assert any(n.startswith("checkpoints/corrupt-4-") for n in _objects(workdir))
  assert checkpoint.finished_steps(workdir) == [2, 4]
  local_state, _ = restore(tmp_path / "local")
  remote_state, _ = restore(workdir)
  for a, b in zip(*(jax_leaves(s) for s in (local_state, remote_state))):
    np.testing.assert_array_equal(a, b)
  rows = [json.loads(l) for l in storage.read_text(f"{workdir}/metrics.jsonl").splitlines()]
  assert [r["step"] for r in rows] == [2, 4], rows

  out_npz = f"{gcs}/out/samples.npz"
  run_cli("cm_jax.sample", f"--workdir={workdir}", "--num_samples=8", f"--out={out_npz}")
  with np.load(io.BytesIO(storage.read_bytes(out_npz))) as d:
    assert d["arr_0"].shape == (8, 16, 16, 1) and d["arr_0"].dtype == np.uint8
  # Editing those samples, in and out of the bucket.
  edited, mask = f"{gcs}/out/inpainted.npz", tmp_path / "mask.png"
  images.save_png(str(mask), np.repeat(np.array([[0], [255]], np.uint8), 8, axis=0)
                  * np.ones((1, 16), np.uint8))  # the lower half is generated
  storage.upload(str(mask), f"{gcs}/in/mask.png")
  run_cli("cm_jax.edit", f"--workdir={workdir}", "--task=inpaint", f"--images={out_npz}",
          f"--mask={gcs}/in/mask.png", f"--out={edited}")
  with np.load(io.BytesIO(storage.read_bytes(edited))) as d, \
       np.load(io.BytesIO(storage.read_bytes(out_npz))) as given:
    assert d["arr_0"].shape == (8, 16, 16, 1) and d["arr_0"].dtype == np.uint8
    np.testing.assert_array_equal(d["arr_0"][:, :8], given["arr_0"][:, :8])  # kept: the mask

  args = ("--num_samples=16", "--batch_size=16", "--ref=data:test")
  run_cli("cm_jax.evaluate", f"--workdir={workdir}", "--steps=1", *args)
  run_cli("cm_jax.evaluate", f"--workdir={workdir}", "--steps=2", *args)
  results = [json.loads(l) for l in
             storage.read_text(f"{workdir}/eval/results.jsonl").splitlines()]
  assert [r["nfe"] for r in results] == [1, 2], results
  # Nothing went to a local folder named after the scheme.
  assert not os.path.exists(os.path.join(REPO_ROOT, "gs:"))


def jax_leaves(state):
  import jax
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(
      (state.params, state.ema_params, state.opt_state, state.step))]


def test_metrics_upload_failure_is_retried(gcs, monkeypatch, caplog):
  from cm_jax.train import metrics
  workdir = f"{gcs}/metrics"
  writer = metrics.MetricWriter(f"{workdir}/tensorboard", f"{workdir}/metrics.jsonl")
  real = storage.upload

  def failing(local, remote):
    raise OSError("503 from the store")

  monkeypatch.setattr(storage, "upload", failing)
  writer.write_scalars(1, {"loss": 1.0})
  assert "Could not upload the metrics" in caplog.text
  assert not storage.exists(f"{workdir}/metrics.jsonl")
  monkeypatch.setattr(storage, "upload", real)
  writer.write_scalars(2, {"loss": 0.5})
  writer.close()
  rows = [json.loads(l) for l in storage.read_text(f"{workdir}/metrics.jsonl").splitlines()]
  assert [r["step"] for r in rows] == [1, 2]
  events = storage.listdir(f"{workdir}/tensorboard")
  assert any(n.startswith("events.out.tfevents.") for n in events), events
