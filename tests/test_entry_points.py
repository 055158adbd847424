"""Every `python -m cm_jax.X` entry point: one framework (absl through cli.run), --help that exits
0 and lists the flags the command reads (a real `python -m` process per command: the wiring the
in-process runs of the other tests skip), a mistake as one `error:` line with exit status 2, and
no flags defined by a library import."""
import importlib

import pytest
from absl import flags

from tests.cli_runner import run_cli

# Modules the library or the tools import that are also commands: their flags (if any) exist only
# when they run as the command, so importing them beside any CLI raises no DuplicateFlagError.
IMPORTED_COMMANDS = ("cm_jax.train.report", "cm_jax.storage", "cm_jax.data.digits",
                     "cm_jax.data.fake", "cm_jax.evaluation.bench_inception",
                     "cm_jax.convert.feature_nets")

_SAMPLING = ("--workdir", "--checkpoint", "--params", "--steps", "--sigmas", "--ts", "--ts_grid",
             "--seed", "--labels", "--batch_size", "--out", "--grid")
# command -> the flags its --help must list (the shared --debug and --verbosity besides)
HELP = {
    "cm_jax.train": ("--config", "--workdir", "--[no]print_config"),
    "cm_jax.sample": _SAMPLING + ("--times", "--edm_levels", "--edm_solver", "--num_samples"),
    "cm_jax.edit": _SAMPLING + ("--task", "--images", "--mask", "--factor", "--noise_sigma",
                                "--[no]add_noise", "--num_alphas", "--num_pairs"),
    "cm_jax.evaluate": ("--workdir", "--samples", "--ref", "--ref_samples", "--steps",
                        "--num_samples", "--checkpoints", "--inception_weights", "--features",
                        "--json", "--seed", "--batch_size", "--params", "--[no]precision_recall",
                        "--[no]search_ts", "--search_grid", "--save_every_s",
                        "--stop_after_batches"),
    "cm_jax.convert": ("--src", "--out", "--vgg", "--heads", "--[no]overwrite", "--family",
                       "--kind", "--config", "--dtype", "--params"),
    "cm_jax.train.report": (),
    "cm_jax.storage": (),
    "cm_jax.data.digits": ("--out",),
    "cm_jax.data.fake": ("--dataset", "--out", "--num_examples", "--seed"),
    "cm_jax.evaluation.bench_inception": ("--inception_weights", "--batch_size", "--batches",
                                          "--resolution", "--[no]torch"),
    "cm_jax.bench": ("--config", "--batch_size", "--train_steps", "--sample_repeats", "--json",
                     "--matmul_size"),
}
# Old spellings, and flags of another command, that must not be in a command's --help.
RENAMED = {"cm_jax.edit": ("--times", "--edm_levels", "--edm_solver", "--num_samples"),
           "cm_jax.evaluate": ("--ts_grid",),
           "cm_jax.convert": ("--dst", "--weights"), "cm_jax.bench": ("--steps",),
           "cm_jax.evaluation.bench_inception": ("--weights", "--no_torch")}


def test_importing_the_commands_defines_no_flags():
  for name in IMPORTED_COMMANDS:
    importlib.import_module(name)
  defined = flags.FLAGS.flags_by_module_dict()
  assert not [name for name in IMPORTED_COMMANDS if defined.get(name)], {
      name: [f.name for f in defined[name]] for name in IMPORTED_COMMANDS if name in defined}


@pytest.mark.slow  # a process per command
@pytest.mark.parametrize("module", sorted(HELP))
def test_help_exits_0_and_lists_every_flag_read(module):
  out = run_cli(module, "--help", check=False, timeout=120, subprocess_only=True)
  assert out.returncode == 0, out.stderr[-2000:]
  listed = out.stdout.split("\nflags:\n")[-1]
  for flag in HELP[module] + ("--[no]debug", "--verbosity"):
    assert f"  {flag}:" in listed or f",{flag}:" in listed, (flag, out.stdout[-3000:])
  for old in RENAMED.get(module, ()):
    assert f"  {old}:" not in listed, (old, out.stdout[-3000:])


@pytest.mark.slow  # a process per command
@pytest.mark.parametrize("args, fragment", [
    (["cm_jax.convert", "lpips", "--vgg=v.pth", "--heads=h.pth", "--out=/nonexistent/w",
      "--params=online"], "--params: not read by `convert lpips`"),
    (["cm_jax.convert", "inception", "--out=/nonexistent/w"], "inception needs --src"),
    (["cm_jax.train.report", "/nonexistent/run"], "No digits_quality_step*.json"),
    (["cm_jax.storage", "put", "/nonexistent/worker-0.log", "/nonexistent/copy.log"],
     "is not a file"),
    (["cm_jax.data.digits", "--out=gs://bucket/tfds"], "cannot be built straight into object"),
    (["cm_jax.data.fake", "--dataset=mnist", "--out=/nonexistent/tfds"], "--dataset=mnist"),
    (["cm_jax.evaluation.bench_inception", "--inception_weights=/nonexistent/w"],
     "No converted fid_inception_v3_2015 weights"),
], ids=lambda v: v[0] if isinstance(v, list) else None)
def test_a_mistake_is_one_error_line_with_status_2(args, fragment):
  out = run_cli(*args, check=False, timeout=120)
  errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  assert out.returncode == 2 and len(errors) == 1 and fragment in errors[0], out.stderr[-2000:]
  assert "Traceback" not in out.stderr, out.stderr[-2000:]
