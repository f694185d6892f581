"""When the train loop logs, evaluates and checkpoints: one rule for all.

Rounds are cut where the host wants to look (every `log_every`,
`eval_every` and `checkpoint_every` steps, and at the end); after each round
`due` says what to do there. A checkpoint always gets a metrics row too, so
a resumed run's rows are the rows an uninterrupted run writes.
"""

import dataclasses


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
  def from_config(cls, train_config, num_steps: int) -> 'Cadence':
    return cls(num_steps, train_config.log_every, train_config.eval_every,
               train_config.checkpoint_every)

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


def _every(step: int, period: int) -> bool:
  return period > 0 and step % period == 0
