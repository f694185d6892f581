"""Everything a run writes about itself: metrics.jsonl, TensorBoard, plots.

Only process 0 writes (the multi-host launcher runs the same loop everywhere).
"""

import glob
import json
import os

import jax
import numpy as np

from hier_avg.errors import UserError
from hier_avg.kinds import is_integer, is_number
from hier_avg.run import distributed, export, files

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
  """The rows of a `metrics.jsonl` ([] if there is none).

  Raises:
    UserError: a line is not a row of ours (edited or damaged by hand).
  """
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().split('\n')
  rows = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      if number == len(lines):
        continue  # The last line, cut short by a kill: not a row yet.
      row = None
    problem = _row_problem(row)
    if problem:
      raise UserError(
          f'{path} line {number} is not a metrics row ({problem}); restore '
          'the file from a backup, or move it away (a resumed run then logs '
          'its rows from the checkpoint on).')
    rows.append(row)
  return rows


def _row_problem(row) -> str | None:
  if not isinstance(row, dict):
    return 'not a JSON object'
  if not is_integer(row.get('step')):
    return f'its step is {row.get("step")!r}, not an integer'
  if not is_number(row.get('wall_s')):
    return f'its wall_s is {row.get("wall_s")!r}, not a number'
  return None


def read_summary(workdir: str) -> dict:
  """`summary.json` of a finished run ({} if there is none).

  Raises:
    UserError: the file is not a summary (cut short, edited by hand).
  """
  path = os.path.join(workdir, SUMMARY_FILE)
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      summary = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    summary, problem = None, f'not JSON: {e}'
  else:
    problem = None if isinstance(summary, dict) else 'not a JSON object'
  if problem:
    raise UserError(
        f'{path} is damaged ({problem}); restore it from a backup, or '
        f'delete it (the run\'s rows stay in {METRICS_FILE}, its model in '
        f'{export.MODEL_FILE}).')
  return summary


TENSORBOARD_FILES = 'events.out.tfevents.*'


def _tensorboard(workdir: str, rows: list[dict]):
  """A TensorBoard writer holding exactly `rows` (None without
  tensorboardX).

  Event files cannot drop events, so those of an earlier process (a
  resumed run) are replaced by one new file of the rows kept: the steps
  it redoes after its checkpoint are then not in TensorBoard twice. They
  hold only what the rows hold.
  """
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  except ImportError:  # TensorBoard events are optional.
    return None
  for path in glob.glob(os.path.join(workdir, TENSORBOARD_FILES)):
    os.remove(path)
  writer = SummaryWriter(workdir)
  for row in rows:
    _mirror(writer, row)
  return writer


def _mirror(writer, row: dict) -> None:
  """A row's numbers as TensorBoard scalars at its step."""
  for key, value in row.items():
    if key != 'step' and isinstance(value, (int, float)):
      writer.add_scalar(key, value, row['step'])


def save_figure(fig, path: str, dpi: int = 100) -> None:
  """`fig` as a PNG at `path`, written atomically."""
  with files.atomic(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=dpi)


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
      with files.atomic(path) as f:
        f.writelines(json.dumps(r) + '\n' for r in self.rows)
      self._file = open(path, 'a')
      self._tb = _tensorboard(workdir, self.rows)

  def write(self, **row) -> None:
    row = {k: _plain(v) for k, v in row.items()}
    self.rows.append(row)
    if not self.enabled:
      return
    self._file.write(json.dumps(row) + '\n')
    self._file.flush()
    if self._tb is not None:
      _mirror(self._tb, row)

  def write_summary(self, summary: dict) -> None:
    if not self.enabled:
      return
    with files.atomic(os.path.join(self.workdir, SUMMARY_FILE)) as f:
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
    save_figure(fig, os.path.join(self.workdir, PLOT_FILE))
    self._plot_drift(Figure)

  def _plot_drift(self, Figure) -> None:  # pylint: disable=invalid-name
    """drift_vs_step.png: each level's drift (and spread) per row."""
    # Zero (learners equal: the warmup's synchronous steps) has no place
    # on a log scale.
    curves = {name: [(r['step'], r[name]) for r in self.rows
                     if is_number(r.get(name)) and r[name] > 0]
              for name in sorted({k for r in self.rows for k in r
                                  if k.endswith(('_drift', '_spread'))})}
    curves = {name: points for name, points in curves.items() if points}
    if not curves:
      return
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, points in curves.items():
      ax.plot(*zip(*points), label=name)
    ax.set(xlabel='local step', yscale='log',
           ylabel='mean squared distance from the group mean')
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, os.path.join(self.workdir, DRIFT_PLOT_FILE))

  def __enter__(self) -> 'MetricsWriter':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      if self._tb is not None:
        self._tb.close()
