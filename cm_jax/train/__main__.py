"""python -m cm_jax.train --config=configs/digits.py:method=ict --workdir=W [--config.a.b=v]

Exit status: 0 finished (or already complete), 2 a mistake in the flags, config or workdir
(one `error:` line; nothing written), 75 stopped by SIGTERM / Ctrl-C after saving (run the same
command to resume), 1 anything else (a bug: the traceback is printed).
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from cm_jax import cli, parallel

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and argument, e.g. configs/digits.py:method=ict[,runlocal].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and samples go here; an "
                               "existing run there is resumed.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.setup_logging()
  parallel.maybe_initialize_distributed()
  from cm_jax.train import loop, report
  with cli.user_errors_exit():
    finish = report.final_report if _CONFIG.value.eval.report_at_end else None
    summary = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value, finish=finish)
  if summary["preempted"]:
    sys.exit(cli.EXIT_PREEMPTED)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
