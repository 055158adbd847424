"""python -m cm_jax.train --config=configs/digits.py:method=ict --workdir=W [--config.a.b=v]
   python -m cm_jax.train --config=... --print_config   # the resolved config, methods, datasets

Exit status: 0 finished (or already complete), 2 a mistake in the flags, config or workdir
(one `error:` line; nothing written), 75 stopped by SIGTERM / Ctrl-C after saving (run the same
command to resume), 1 anything else (a bug: the traceback is printed).
"""
import sys

from absl import flags
from ml_collections import config_flags

from cm_jax import cli, parallel
from cm_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and argument, e.g. configs/digits.py:method=ict[,runlocal].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and samples go here; an "
                               "existing run there is resumed.")
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False, "Print the resolved config (overrides "
                                  "applied), the methods and the datasets, and exit; nothing is "
                                  "trained or written.")
flags.mark_flags_as_required(["config"])


def describe(config) -> str:
  """The resolved config, then what --config can choose between."""
  from cm_jax import data, methods
  lines = ["# The resolved config", str(config).rstrip(), "", "# Methods (config.method)"]
  for name, spec in methods.SPECS.items():
    teacher = "" if spec.teacher == "none" else (
        f"; teacher: {spec.teacher} method={spec.teacher_method} workdir (--config.teacher)")
    lines.append(f"{name:9s} {spec.summary} [{spec.kind}, {spec.time} time{teacher}]")
  lines += ["", "# Datasets (config.data.name)", ", ".join(data.known_names())]
  return "\n".join(lines)


def main() -> None:
  if _PRINT_CONFIG.value:
    print(describe(_CONFIG.value))
    return
  if not _WORKDIR.value:
    raise UserError("--workdir is required: the directory the run writes (or resumes) its "
                    "checkpoints in; or pass --print_config to only show the config.")
  parallel.maybe_initialize_distributed()  # before anything touches a JAX backend
  from cm_jax.train import loop, report
  finish = report.final_report if _CONFIG.value.eval.report_at_end else None
  summary = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value, finish=finish)
  if summary["preempted"]:
    sys.exit(cli.EXIT_PREEMPTED)


if __name__ == "__main__":
  cli.run(main)
