"""The host's view of training between two rows: losses, drift, time.

Rounds hand back their outputs without waiting (`add`); at a row the
losses and the averagings' measures of every process are gathered once
(`collect`), checked for divergence and averaged, and the time since the
last row counts as training time.

A row's loss is the mean over the steps since the row before, so it moves
with the logging cadence. The run's final training loss does not: it is
the mean over a fixed number of the run's last steps (`LossWindow`), summed
step by step in step order and carried through checkpoints.
"""

import collections

import time

from jax.experimental import multihost_utils
import numpy as np

from hier_avg.errors import UserError


class TrainingDiverged(UserError):
  """The loss or the parameters became NaN or infinite."""


def gather_losses(pending) -> list[tuple[int, np.ndarray]]:
  """(step, every learner's loss) for each step of `pending`'s rounds,
  each `(first step, [length, grid...] losses)`, from every process."""
  return [(first + 1 + i, step_loss.reshape(-1))
          for first, round_loss in pending
          for i, step_loss in enumerate(
              multihost_utils.process_allgather(round_loss, tiled=True))]


def learners_mean(loss: np.ndarray) -> float:
  """The mean of one step's losses over all learners, in float64."""
  return float(np.mean(loss, dtype=np.float64))


def step_mean_losses(pending) -> list[tuple[int, float]]:
  """(step, mean loss over all learners of all processes, in float64) for
  each step of `pending` (as `gather_losses`): the same on every host."""
  return [(step, learners_mean(loss)) for step, loss in gather_losses(pending)]


class LossWindow:
  """The mean training loss over a run's last `size` steps.

  It keeps each of those steps' mean loss over every learner of every
  process (float64) and sums them in step order, so the figure is the
  same however the steps were cut into rounds and rows, and whether the
  run was resumed, or lengthened on resume: every checkpoint carries the
  window as it is (`record`).
  """

  def __init__(self, size: int, record=()):
    """`record`: a checkpoint's `record()`, to go on from."""
    self._losses = collections.deque(
        (int(step), float(loss)) for step, loss in record)
    self._size = size
    self._trim()

  def add(self, step: int, loss: np.ndarray) -> None:
    self._losses.append((step, learners_mean(loss)))
    self._trim()

  def _trim(self) -> None:
    while len(self._losses) > self._size:
      self._losses.popleft()

  @property
  def mean(self) -> float:
    if not self._losses:
      return float('nan')
    return sum(loss for _, loss in self._losses) / len(self._losses)

  @property
  def steps(self) -> list[int]:
    """[first, last] step of the window ([] while empty)."""
    return [self._losses[0][0], self._losses[-1][0]] if self._losses else []

  def record(self) -> list[list]:
    return [[step, loss] for step, loss in self._losses]


class Progress:
  """Losses and training time since the last row, and in all."""

  def __init__(self, images_per_step: int, final_loss: LossWindow,
               wall_s_before: float = 0.0, up_at=None):
    """`up_at(step)`: which learners (grid ids, [P] bool) took the step,
    where some may not (simulated outages: a learner down has no loss);
    None: all."""
    self.images_per_step = images_per_step
    self.final_loss = final_loss
    self.up_at = up_at
    # A resumed run's clock goes on from its checkpoint's row.
    self._start = time.perf_counter() - wall_s_before
    # (first step, {'loss': [length, grid...]}) per round.
    self._pending = []
    # (level name, {measure: [1, grid...]}) per averaging.
    self._measures = []
    self.train_s = 0.0
    self.images_seen = 0
    self._segment_start = time.perf_counter()

  def add(self, first_step: int, outputs: dict, level=None) -> None:
    """A round's outputs (`Engine.train_round`); `level`: its averaging."""
    self._pending.append((first_step, {'loss': outputs['loss']}))
    measures = {k: v for k, v in outputs.items() if k != 'loss'}
    if level is not None and measures:
      self._measures.append((level.name, measures))

  @property
  def held(self) -> list[dict]:
    """The device arrays of the rounds not collected yet, `{name:
    array}` each (an elastic run moves them onto its survivors' mesh)."""
    return ([outputs for _, outputs in self._pending] +
            [measures for _, measures in self._measures])

  def collect(self) -> tuple[float, float, dict[str, float]]:
    """(mean loss, images/s, measures) of the steps since the last call.

    Each process holds its own learners' losses; every process gets all of
    them, so all agree on the metrics and on divergence. `measures` has
    `<level>_<measure>` (e.g. `local_drift`): the mean over learners, then
    over that level's averagings since the last call.
    """
    segment_s = time.perf_counter() - self._segment_start
    losses = gather_losses([(first, outputs['loss'])
                            for first, outputs in self._pending])
    self._pending.clear()
    for step, loss in losses:
      bad = np.flatnonzero(~np.isfinite(loss))
      if bad.size:
        raise TrainingDiverged(
            f'training diverged: non-finite loss at step {step} (learner '
            f'{bad[0]}); lower opt.lr or add opt.warmup_epochs.')
    if self.up_at is not None:  # A learner down has no loss (it reads 0).
      losses = [(step, loss[self.up_at(step)]) for step, loss in losses]
    for step, loss in losses:
      self.final_loss.add(step, loss)
    self.train_s += segment_s
    images = self.images_per_step * len(losses)
    self.images_seen += images
    return (float(np.mean([l.mean() for _, l in losses])),
            images / max(segment_s, 1e-9), self._collect_measures())

  def _collect_measures(self) -> dict[str, float]:
    events = {}
    for level, measures in self._measures:
      for name, value in measures.items():
        everyone = multihost_utils.process_allgather(value, tiled=True)
        events.setdefault(f'{level}_{name}', []).append(
            float(np.mean(everyone, dtype=np.float64)))
    self._measures.clear()
    return {name: float(np.mean(values)) for name, values in events.items()}

  def resume_timing(self) -> None:
    """Evaluation, logging and checkpointing do not count as training."""
    self._segment_start = time.perf_counter()

  @property
  def wall_s(self) -> float:
    return time.perf_counter() - self._start

  @property
  def images_per_s(self) -> float:
    return self.images_seen / max(self.train_s, 1e-9)
