"""What a run leaves in its workdir, read as the library reads it."""

import os

import numpy as np

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


# Measured by the clock, not computed: they differ between any two runs.
TIMINGS = ('images_per_s', 'wall_s')


def assert_rows_close(rows, other, accuracy_atol: float):
  """The metrics rows of two runs of other programs (host and device data
  placement, ...): the same steps and keys, counters equal, every other
  value equal to float32 rounding; an accuracy within `accuracy_atol`
  (a prediction at a near tie may flip). Timings are left out."""
  assert [sorted(r) for r in rows] == [sorted(r) for r in other], (
      rows, other)
  for row, other_row in zip(rows, other):
    for key, value in row.items():
      if key in TIMINGS:
        continue
      if isinstance(value, int):
        assert value == other_row[key], (key, row, other_row)
      else:
        atol = accuracy_atol if key.endswith('accuracy') else 1e-6
        np.testing.assert_allclose(value, other_row[key], rtol=1e-5,
                                   atol=atol, err_msg=f'{key} {row}')
