"""The edit CLI end to end on a runlocal-trained workdir, and clear errors for bad input.

The workdir is class-conditional (the digits default is not) so that one ~20 s training run
also covers labels end to end: training, the sample CLI's --labels, and the edit CLI's.
"""
import numpy as np
import pytest
from PIL import Image

from cm_jax import editing
from tests.cli_runner import assert_user_error, run_cli, sample, train

# Trains or launches processes: the whole suite, not the fast tier (-m "not slow").
pytestmark = pytest.mark.slow


def edit(workdir, *args, **kw):
  return run_cli("cm_jax.edit", f"--workdir={workdir}", *args, **kw)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("edit")
  train(root / "w", "configs/digits.py:method=ict,runlocal", "--config.eval.report_at_end=False",
        "--config.model.class_conditional=True")
  rng = np.random.default_rng(0)
  digits = rng.integers(0, 256, (5, 16, 16, 1), dtype=np.uint8)
  np.savez(root / "images.npz", arr_0=digits)
  return root, digits


def test_inpaint_keeps_the_known_pixels_on_1_and_8_devices(setup, tmp_path):
  root, digits = setup
  args = ["--task=inpaint", f"--images={root}/images.npz", "--mask=center", "--sigmas=80,2.5",
          "--labels=7"]
  out = edit(root / "w", *args, f"--out={tmp_path}/in.npz", f"--grid={tmp_path}/in.png")
  assert "Wrote 5 inpaint results" in out.stdout
  edited = np.load(tmp_path / "in.npz")["arr_0"]
  np.testing.assert_array_equal(np.load(tmp_path / "in.npz")["arr_1"], [7] * 5)
  assert edited.shape == digits.shape and edited.dtype == np.uint8
  keep = np.broadcast_to(editing.center_mask(16, 16) == 0, digits.shape)
  np.testing.assert_array_equal(edited[keep], digits[keep])
  assert not np.array_equal(edited[~keep], digits[~keep])
  # Grid: one row per image of (original, masked, edited), scaled 4x.
  assert Image.open(tmp_path / "in.png").size == (4 * (3 * 17 + 1), 4 * (5 * 17 + 1))
  # Edit i depends on the seed and i only: the same on 8 devices in batches of 3 (padded to 8).
  edit(root / "w", *args, "--batch_size=3", f"--out={tmp_path}/eight.npz", devices=8)
  np.testing.assert_array_equal(np.load(tmp_path / "eight.npz")["arr_0"], edited)


def test_inpaint_strokes(setup, tmp_path):
  root, digits = setup
  edit(root / "w", "--task=inpaint", f"--images={root}/images.npz", "--mask=strokes",
       f"--out={tmp_path}/st.npz")
  edited = np.load(tmp_path / "st.npz")["arr_0"]
  # Strokes differ per image; most pixels are kept.
  kept = (edited == digits).mean(axis=(1, 2, 3))
  assert np.all((0.4 < kept) & (kept < 1.0)), kept


def test_superres_from_low_resolution_pngs(setup, tmp_path):
  root, _ = setup
  low = np.random.default_rng(1).integers(0, 256, (3, 4, 4), dtype=np.uint8)
  pngs = tmp_path / "low"
  pngs.mkdir()
  for i, img in enumerate(low):
    Image.fromarray(img).convert("RGB").save(pngs / f"{i:02d}.png")  # read back as grayscale
  edit(root / "w", "--task=superres", f"--images={pngs}", "--factor=4",
       f"--out={tmp_path}/sr.npz", f"--grid={tmp_path}/sr.png")
  edited = np.load(tmp_path / "sr.npz")["arr_0"]
  assert edited.shape == (3, 16, 16, 1)
  means = edited.astype(np.float64).reshape(3, 4, 4, 4, 4).mean(axis=(2, 4))
  # The patch means are kept up to the uint8 rounding (and clipping at 0/255) of the pixels.
  assert np.abs(means - low).max() <= 1.0
  assert (tmp_path / "sr.png").exists()


def test_denoise_and_interpolate(setup, tmp_path):
  root, digits = setup
  edit(root / "w", "--task=denoise", f"--images={root}/images.npz", "--noise_sigma=0.3",
       f"--out={tmp_path}/dn.npz")
  assert np.load(tmp_path / "dn.npz")["arr_0"].shape == digits.shape
  edit(root / "w", "--task=interpolate", "--num_pairs=2", "--num_alphas=5", "--labels=3",
       f"--out={tmp_path}/ip.npz", f"--grid={tmp_path}/ip.png")
  path = np.load(tmp_path / "ip.npz")["arr_0"]
  assert path.shape == (10, 16, 16, 1)
  # The ends of pair k are samples 2k and 2k+1 of the sample CLI (same seed, label, 1 level).
  sample(root / "w", "--num_samples=4", "--labels=3", f"--out={tmp_path}/s.npz")
  np.testing.assert_array_equal(np.load(tmp_path / "s.npz")["arr_1"], [3] * 4)
  ends = np.load(tmp_path / "s.npz")["arr_0"].astype(int)
  assert np.abs(path[[0, 4, 5, 9]].astype(int) - ends).max() <= 1  # float rounding of slerp


def test_bad_inputs_are_clear_errors(setup, tmp_path):
  root, digits = setup
  w, images = root / "w", f"--images={root}/images.npz"
  out = f"--out={tmp_path}/x.npz"
  np.savez(tmp_path / "small.npz", arr_0=digits[:, :8, :8])
  assert_user_error(edit(w, "--task=inpaint", f"--images={tmp_path}/small.npz", out, check=False),
         "Images are 8x8; the model works at 16x16")
  np.savez(tmp_path / "rgb.npz", arr_0=np.repeat(digits, 3, axis=-1))
  assert_user_error(edit(w, "--task=inpaint", f"--images={tmp_path}/rgb.npz", out, check=False),
         "3 channels; the model needs 1")
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "mask.png")
  assert_user_error(edit(w, "--task=inpaint", images, f"--mask={tmp_path}/mask.png", out, check=False),
         "Mask", "is 8x8; the images are 16x16")
  assert_user_error(edit(w, "--task=inpaint", images, "--sigmas=2.5,80", out, check=False),
         "decrease strictly")
  assert_user_error(edit(w, "--task=superres", images, "--sigmas=100", out, check=False),
         "must lie in (0.002, 80.0]")
  assert_user_error(edit(w, "--task=superres", images, "--factor=3", out, check=False),
         "--factor must be one of (2, 4, 8)")
  assert_user_error(edit(w, "--task=colorize", images, out, check=False), "needs RGB images")
  assert_user_error(edit(w, "--task=sharpen", images, out, check=False), "--task")
  assert_user_error(edit(w, "--task=inpaint", images, "--num_samples=3", "--edm_levels=5", out, check=False),
         "Unknown command line flag 'num_samples'")
  assert not (tmp_path / "x.npz").exists()


def test_the_images_own_labels_condition_the_edit(setup, tmp_path):
  root, digits = setup
  np.savez(tmp_path / "labelled.npz", arr_0=digits, arr_1=np.arange(5))
  edit(root / "w", "--task=denoise", f"--images={tmp_path}/labelled.npz", "--noise_sigma=0.5",
       f"--out={tmp_path}/d.npz")
  np.testing.assert_array_equal(np.load(tmp_path / "d.npz")["arr_1"], np.arange(5))
  np.savez(tmp_path / "bad.npz", arr_0=digits, arr_1=np.arange(3))
  assert_user_error(edit(root / "w", "--task=denoise", f"--images={tmp_path}/bad.npz", "--noise_sigma=0.5",
              f"--out={tmp_path}/x.npz", check=False), "arr_1 (labels) must be 5 integers")
  out = edit(root / "w", "--task=denoise", f"--images={root}/images.npz", "--noise_sigma=0.5",
             f"--out={tmp_path}/r.npz")
  assert "holds no labels (arr_1): labels are drawn at random" in out.stderr


def test_sample_cli_random_labels(setup, tmp_path):
  root, _ = setup
  sample(root / "w", "--num_samples=5", "--batch_size=2", f"--out={tmp_path}/random.npz")
  drawn = np.load(tmp_path / "random.npz")
  assert drawn["arr_0"].shape == (5, 16, 16, 1)
  assert drawn["arr_1"].shape == (5,) and 0 <= drawn["arr_1"].min() <= drawn["arr_1"].max() <= 9
  assert_user_error(sample(root / "w", "--num_samples=5", "--labels=1,2", f"--out={tmp_path}/x.npz",
                check=False), "2 labels for 5 samples")
