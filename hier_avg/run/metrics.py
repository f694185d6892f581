"""Everything a run writes about itself: metrics.jsonl, TensorBoard, plots.

Only process 0 writes (the multi-host launcher runs the same loop everywhere).
"""

import json
import os

import jax
import numpy as np

from hier_avg.run import distributed

METRICS_FILE = 'metrics.jsonl'
SUMMARY_FILE = 'summary.json'
PLOT_FILE = 'curves.png'
DRIFT_PLOT_FILE = 'drift_vs_step.png'


def _plain(value):
  """JSON-safe Python scalars from numpy/jax values."""
  if isinstance(value, (np.generic, np.ndarray, jax.Array)):
    return np.asarray(value).item()
  return value


def read_rows(path: str) -> list[dict]:
  """The rows of a `metrics.jsonl` ([] if there is none)."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    # A line cut short by a kill is not a row.
    rows = []
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        pass
    return rows


def read_summary(workdir: str) -> dict:
  """`summary.json` of a finished run ({} if there is none)."""
  path = os.path.join(workdir, SUMMARY_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


class MetricsWriter:
  """Appends one JSON row per event, mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str, keep_until_step: int = 0):
    """Opens `metrics.jsonl`, keeping the rows up to `keep_until_step`.

    A resumed run redoes the steps after its checkpoint; their old rows
    are dropped first, so no step is ever logged twice.
    """
    self.workdir = workdir
    self.enabled = distributed.is_main_process()
    self.rows: list[dict] = []
    self._tb = None
    if self.enabled:
      path = os.path.join(workdir, METRICS_FILE)
      self.rows = [r for r in read_rows(path)
                   if r['step'] <= keep_until_step]
      partial = path + '.partial'
      with open(partial, 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in self.rows)
      os.replace(partial, path)
      self._file = open(path, 'a')
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(workdir)
      except ImportError:  # TensorBoard events are optional.
        self._tb = None

  def write(self, **row) -> None:
    row = {k: _plain(v) for k, v in row.items()}
    self.rows.append(row)
    if not self.enabled:
      return
    self._file.write(json.dumps(row) + '\n')
    self._file.flush()
    if self._tb is not None:
      for key, value in row.items():
        if key != 'step' and isinstance(value, (int, float)):
          self._tb.add_scalar(key, value, row['step'])

  def write_summary(self, summary: dict) -> None:
    if not self.enabled:
      return
    with open(os.path.join(self.workdir, SUMMARY_FILE), 'w') as f:
      json.dump({k: _plain(v) for k, v in summary.items()}, f, indent=2)
    self.plot()

  def plot(self) -> None:
    """curves.png: training loss and test accuracy against the step."""
    # A bare Figure, not pyplot: no global backend switch, so a notebook
    # that calls this keeps its inline plots.
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
    train = [r for r in self.rows if 'train_loss' in r]
    test = [r for r in self.rows if 'test_accuracy' in r]
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot([r['step'] for r in train], [r['train_loss'] for r in train])
    ax_loss.set(xlabel='local step', ylabel='train loss (mean of learners)',
                yscale='log')
    ax_acc.plot([r['step'] for r in test],
                [r['test_accuracy'] for r in test], marker='o')
    ax_acc.set(xlabel='local step', ylabel='test accuracy (averaged model)')
    for ax in (ax_loss, ax_acc):
      ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(self.workdir, PLOT_FILE), dpi=100)
    self._plot_drift(Figure)

  def _plot_drift(self, Figure) -> None:  # pylint: disable=invalid-name
    """drift_vs_step.png: each level's drift (and spread) per row."""
    names = sorted({k for r in self.rows for k in r
                    if k.endswith(('_drift', '_spread'))})
    if not names:
      return
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name in names:
      rows = [r for r in self.rows if name in r]
      ax.plot([r['step'] for r in rows], [r[name] for r in rows],
              label=name)
    ax.set(xlabel='local step', yscale='log',
           ylabel='mean squared distance from the group mean')
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(self.workdir, DRIFT_PLOT_FILE), dpi=100)

  def __enter__(self) -> 'MetricsWriter':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      if self._tb is not None:
        self._tb.close()
