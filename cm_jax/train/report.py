"""The end-of-run report: placeholder until the scorer lands."""


def final_report(summary: dict) -> dict:
  print(f"Checkpoints: {summary['checkpoint_dir']}\nGrid: {summary.get('grid')}")
  return {}
