"""When the train loop logs, evaluates and checkpoints: one rule for all.

Rounds are cut where the host wants to look (every `log_every`,
`eval_every` and `checkpoint_every` steps, and at the end); after each round
`due` says what to do there. A checkpoint always gets a metrics row too, so
a resumed run's rows are the rows an uninterrupted run writes.

Each distinct round length is its own compiled program, so the periods
snap to the averaging period K (the narrowest level's): a period that
divides K or is a multiple of it is kept, any other becomes the nearest
multiple of K. `log_every=50` with K = 16 would otherwise cut rounds of 16,
2, 14, 4, 12, ... steps: eight programs where two do.
"""

import dataclasses

_NAMES = ('log_every', 'eval_every', 'checkpoint_every')


@dataclasses.dataclass(frozen=True)
class Due:
  """What the loop does after a round."""
  log: bool = False
  evaluate: bool = False
  checkpoint: bool = False


@dataclasses.dataclass(frozen=True)
class Cadence:
  """Every how many steps to log, evaluate and checkpoint (0: never)."""
  num_steps: int
  log_every: int
  eval_every: int = 0
  checkpoint_every: int = 0

  @classmethod
  def from_config(cls, train_config, num_steps: int,
                  averaging_period: int = 1) -> 'Cadence':
    """The config's periods, each snapped to `averaging_period`."""
    return cls(num_steps, *(snap(train_config[name], averaging_period)
                            for name in _NAMES))

  def snapped_from(self, train_config) -> list[str]:
    """'train.KEY=WAS -> NOW' for each period that snapping changed."""
    return [f'train.{name}={train_config[name]} -> {getattr(self, name)}'
            for name in _NAMES if train_config[name] != getattr(self, name)]

  @property
  def cut_every(self) -> tuple[int, ...]:
    """Periods at which rounds end, so the host can look at the state."""
    return (self.log_every, self.eval_every, self.checkpoint_every)

  def due(self, step: int, stopping: bool = False) -> Due:
    """What happens after `step` (1-based); `stopping`: a stop request."""
    last = step == self.num_steps
    checkpoint = stopping or last or _every(step, self.checkpoint_every)
    return Due(log=last or checkpoint or _every(step, self.log_every),
               evaluate=last or _every(step, self.eval_every),
               checkpoint=checkpoint)


def snap(period: int, averaging_period: int) -> int:
  """`period` if it divides `averaging_period` or is a multiple of it (or is
  0: never); else the nearest multiple of `averaging_period` (ties round up).
  """
  k = max(1, averaging_period)
  if period <= 0 or k % period == 0 or period % k == 0:
    return period
  return max(1, (2 * period + k) // (2 * k)) * k


def _every(step: int, period: int) -> bool:
  return period > 0 and step % period == 0
