"""python -m cm_jax.train --config=configs/digits.py:method=ict --workdir=W [--config.a.b=v]"""
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
    summary = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    if not summary["preempted"] and _CONFIG.value.eval.report_at_end:
      report.final_report(summary)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
