"""What a run leaves in its workdir, read as the library reads it."""

import os

from hier_avg.run import export, metrics


def metrics_rows(workdir: str) -> list[dict]:
  """The rows of the run's metrics.jsonl ([] before the first one).

  A row still being written (a run in progress, or killed) is not one.
  """
  return metrics.read_rows(os.path.join(workdir, metrics.METRICS_FILE))


def summary(workdir: str) -> dict:
  """The run's summary.json ({} until the run has ended)."""
  return metrics.read_summary(workdir)


def final_model(workdir: str) -> dict:
  """The variables of the run's exported final model."""
  return export.load_model(os.path.join(workdir, export.MODEL_FILE))


def rows_and_model(workdir: str) -> tuple[list[dict], dict]:
  """A finished run's metrics rows and final model."""
  return metrics_rows(workdir), final_model(workdir)


def snapshot(path: str) -> dict:
  """Every folder and file under `path`, with bytes (to prove no change)."""
  files = {}
  for root, folders, names in os.walk(path):
    for name in folders:
      files[os.path.relpath(os.path.join(root, name), path) + '/'] = None
    for name in names:
      full = os.path.join(root, name)
      with open(full, 'rb') as f:
        files[os.path.relpath(full, path)] = f.read()
  return files
