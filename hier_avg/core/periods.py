"""Averaging periods that change over training: `hier.period_schedule`.

A run's averaging periods are a list of *phases* `(start step, multiplier
m)`: from a phase's start on, every level averages every `m * T_i` steps,
counted from that start (`core/schedule.py` answers which level averages
when, and counts them). All levels scale together, so the periods keep
their nested multiples; a phase starts only where the phase before it ends
in an outermost averaging, so every phase begins with all learners equal.
The first phase starts where the sync warmup ends (step W).

A `PeriodController` owns the phase list and decides each next multiplier:

- `constant` (the default): one phase, m = 1 (no controller at all).
- `step` (`StepPeriods`): the multiplier of the last milestone reached
  (`hier.period_milestones`, in epochs like `opt.milestones`, with
  `hier.period_factors`); a milestone takes effect at the first outermost
  averaging at or after its step. Known before training.
- `adaptive` (`AdaptivePeriods`, AdaComm, Wang & Joshi 2019): at each
  outermost averaging the multiplier of what follows is
  `ceil(sqrt(loss_now / loss_at_start) * base)`, clipped to
  `[hier.adaptive_min, hier.adaptive_max]` and rounded down to a power of
  two, where `loss_now` is the mean training loss of the steps since the
  previous outermost averaging and `loss_at_start` that of the first such
  stretch after the warmup. Powers of two bound the compiled programs (one
  per level and round length) to a few per allowed multiplier.

The controller's state goes into every checkpoint record (`record`,
`restore`), so a resumed run continues with the same phases.
"""

import dataclasses
import math
from typing import Iterable, Sequence

PERIOD_SCHEDULES = ('constant', 'step', 'adaptive')


@dataclasses.dataclass(frozen=True)
class Phase:
  """From step `start` on, every period times `multiplier`, counted from
  `start`."""
  start: int
  multiplier: int


class PeriodController:
  """The phases of a run so far, and the rule that adds the next ones.

  The train loop tells it each outermost averaging (`after_outermost`),
  with the losses since the one before when `needs_losses`; the schedule
  reads `phases` whenever it plans the next round.
  """
  needs_losses = False

  def __init__(self, phases: Sequence[Phase], rule: str = 'as listed'):
    self._phases = list(phases)
    self.rule = rule  # How the phases are decided, for the logs.

  @property
  def phases(self) -> tuple[Phase, ...]:
    return tuple(self._phases)

  @property
  def multipliers(self) -> tuple[int, ...]:
    """Every multiplier the run may use, increasing."""
    return tuple(sorted({p.multiplier for p in self._phases}))

  def add_losses(self, step_losses: Iterable[tuple[int, float]]) -> None:
    """(step, mean loss over all learners) of steps since the last call."""

  def after_outermost(self, step: int) -> None:
    """Step `step` ended with an outermost averaging: a phase may start."""

  def record(self) -> dict:
    """The state a checkpoint keeps (JSON)."""
    return {'phases': [[p.start, p.multiplier] for p in self._phases]}

  def restore(self, record: dict) -> None:
    """The state of `record()`, as a checkpoint kept it."""


class StepPeriods(PeriodController):
  """The multiplier of the last milestone reached, from the first
  outermost averaging at or after it: all phases known up front."""

  def __init__(self, warmup: int, outer_period: int,
               milestone_steps: Sequence[int], factors: Sequence[int]):
    super().__init__(
        step_phases(warmup, outer_period, milestone_steps, factors),
        'step: ' + ', '.join(f'x{f} from step {s}'
                             for s, f in zip(milestone_steps, factors)) +
        ' (each from the next outermost averaging)')


def step_phases(warmup: int, outer_period: int,
                milestone_steps: Sequence[int],
                factors: Sequence[int]) -> list[Phase]:
  """The phases of a `step` schedule.

  At each outermost averaging b (W, then every `outer_period` times the
  phase's multiplier) the multiplier becomes the factor of the last
  milestone <= b (1 before the first); a phase starts where it changes.
  Milestones are sorted; several inside one outer period take effect
  together, as the last of them.
  """
  def factor_at(step):
    reached = [f for s, f in zip(milestone_steps, factors) if s <= step]
    return reached[-1] if reached else 1

  phases = [Phase(warmup, factor_at(warmup))]
  for milestone in milestone_steps:
    last = phases[-1]
    if milestone <= last.start:
      continue
    k = outer_period * last.multiplier
    boundary = last.start + -(-(milestone - last.start) // k) * k
    multiplier = factor_at(boundary)
    if multiplier != last.multiplier:
      phases.append(Phase(boundary, multiplier))
  return phases


def phases_before(phases: Sequence[Phase], step: int) -> tuple[Phase, ...]:
  """The phases a run of `step` steps used: the first, and those starting
  before `step` (a decision at the last step starts none of its steps)."""
  return tuple(phases[:1]) + tuple(p for p in phases[1:] if p.start < step)


def describe_phases(phases: Iterable[Phase]) -> str:
  """'x1 from step 0, x4 from step 96'."""
  return ', '.join(f'x{p.multiplier} from step {p.start}' for p in phases)


def powers_of_two(low: int, high: int) -> tuple[int, ...]:
  """The powers of two in `[low, high]`, increasing."""
  return tuple(2 ** e for e in range(high.bit_length())
               if low <= 2 ** e <= high)


def adaptive_multiplier(loss_now: float, loss_at_start: float, base: int,
                        low: int, high: int) -> int:
  """AdaComm's `ceil(sqrt(loss_now / loss_at_start) * base)`, clipped to
  `[low, high]`, rounded down to a power of two (low, high: powers of two).

  Rounding down errs towards averaging more often; the set of multipliers
  stays `powers_of_two(low, high)`, which bounds the compiled programs.
  """
  ratio = loss_now / loss_at_start if loss_at_start > 0 else 1.0
  m = math.ceil(math.sqrt(max(ratio, 0.0)) * base)
  m = min(max(m, low), high)
  return 1 << (m.bit_length() - 1)


class AdaptivePeriods(PeriodController):
  """AdaComm: longer periods while the loss is high, shorter as it falls.

  Every process takes the same decision: the losses it is given are
  gathered from all processes (`run/progress.py`, `gather_losses`) and
  reduced here in step order, in float64, the same on every host.
  """
  needs_losses = True

  def __init__(self, warmup: int, base: int, low: int, high: int):
    super().__init__(
        [Phase(warmup, base)],
        f'adaptive: x{base} at start, then at each outermost averaging '
        f'ceil(sqrt(loss / first loss) * {base}) in [{low}, {high}], '
        'rounded down to a power of two')
    self.base, self.low, self.high = base, low, high
    self.loss_at_start = None
    # The losses since the last outermost averaging: sum and steps.
    self._sum, self._steps = 0.0, 0

  @property
  def multipliers(self) -> tuple[int, ...]:
    return powers_of_two(self.low, self.high)

  def add_losses(self, step_losses):
    # The warmup's steps belong to no phase.
    for step, loss in step_losses:
      if step > self._phases[0].start:
        self._sum += float(loss)
        self._steps += 1

  def after_outermost(self, step):
    if step <= self._phases[0].start or not self._steps:
      return
    loss_now = self._sum / self._steps
    self._sum, self._steps = 0.0, 0
    if not math.isfinite(loss_now):
      return  # The divergence check stops the run at the next row.
    if self.loss_at_start is None:
      self.loss_at_start = loss_now
    multiplier = adaptive_multiplier(loss_now, self.loss_at_start,
                                     self.base, self.low, self.high)
    if multiplier != self._phases[-1].multiplier:
      self._phases.append(Phase(step, multiplier))

  def record(self):
    return {**super().record(), 'loss_at_start': self.loss_at_start,
            'window': [self._sum, self._steps]}

  def restore(self, record):
    self._phases = [Phase(*p) for p in record['phases']]
    self.loss_at_start = record['loss_at_start']
    self._sum, self._steps = record['window']


def from_config(hier_config, warmup: int, outer_period: int,
                steps_per_epoch: int) -> PeriodController | None:
  """`hier.period_schedule`'s controller; None for `constant`.

  `outer_period`: the outermost level's period (phases start on its
  multiples); milestones in epochs become steps as `opt.milestones` do.
  """
  name = hier_config.period_schedule
  if name == 'step':
    return StepPeriods(
        warmup, outer_period,
        [int(round(m * steps_per_epoch))
         for m in hier_config.period_milestones],
        list(hier_config.period_factors))
  if name == 'adaptive':
    return AdaptivePeriods(warmup, hier_config.adaptive_base,
                           hier_config.adaptive_min, hier_config.adaptive_max)
  return None
