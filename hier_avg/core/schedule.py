"""When learners average, as a list of levels.

A level is a set of grid axes to average over and a period in local steps.
Hier-AVG has two: local (axis 'local', every K1 steps) and global (all axes,
every K1*K2 steps). Periods nest (each divides the next), and when several
levels fall on the same step the widest one wins: a global averaging replaces
the local one of that step. A third level (pods of nodes) is one more entry.

A level may average late (`Level.delay` tau, `hier.delay`): its averaging
after step H averages the models of step H - tau (the snapshot), and its
collective runs while the learners take steps H - tau + 1 ... H. Every
round says where such a window opens or closes in it (`Round.snapshot`,
`Round.delayed`); a round cut inside a window (a log, an evaluation, a
memory cap) leaves the pending averaging in the state for the round that
closes it.

A level may average its parameters in fragments (`Level.fragments` F,
`hier.fragments`, `core/fragments.py`): fragment f after step
floor(T (f + 1) / F) of each period. Rounds then also end at those steps,
and each round lists the fragments averaged after it (`Round.fragments`).
"""

import bisect
import dataclasses
import math
from typing import Iterator, Sequence

from hier_avg.core import fragments as fragments_lib
from hier_avg.core.periods import Phase, PeriodController
from hier_avg.core.topology import LOCAL, NODE


@dataclasses.dataclass(frozen=True)
class Level:
  name: str
  axes: tuple[str, ...]  # Grid axes averaged over.
  period: int            # Local steps between averagings at this level.
  # Steps tau by which the averaging is late: the averaging after step H
  # averages the models of step H - tau; each learner keeps what it did
  # since (`hier.delay`). Below the narrowest period, so that no other
  # averaging falls inside the window (H - tau, H].
  delay: int = 0
  # Parameter fragments, each averaged at its own step of the period
  # (`core/fragments.py`); 1: the whole model at the period's end.
  fragments: int = 1


@dataclasses.dataclass(frozen=True)
class Round:
  """Local steps `[first, first + length)`, then `level`'s averaging.

  With a delayed level (`Level.delay` tau > 0) averaging after step H, the
  round holding step H - tau takes the snapshot: after `snapshot` of its
  steps it starts `delayed`'s averaging of the models as they are then
  (the collective), and its remaining steps do not depend on it. The
  round that ends at H (`level == delayed`) applies it; if a cut falls
  between, the snapshot's round keeps the pending averaging in the state
  and the closing round (`snapshot` None) reads it from there. `delayed`
  is None for every round that neither opens nor closes a window (the
  warmup's averagings are never late).
  """
  first: int
  length: int
  level: Level | None
  snapshot: int | None = None     # Steps before the snapshot, in [0, length).
  delayed: Level | None = None    # The delayed level it opens or closes.
  # With fragmented levels (`Schedule.fragmented`): the parameter
  # fragments each level averages after the round, innermost first
  # (`Schedule.fragment_events`); `level` then averages the other parts
  # and applies its policy. () otherwise.
  fragments: tuple[tuple[Level, tuple[int, ...]], ...] = ()
  # A step of the synchronous warmup (`Schedule.sync_warmup`): synchronous
  # SGD, every gradient averaged over all learners before the update, so
  # `level` (the outermost) finds the models already equal.
  synchronous: bool = False

  @property
  def end(self) -> int:
    return self.first + self.length

  @property
  def measured(self) -> Level | None:
    """The level whose measures (drift, ...) the round's outputs carry:
    the widest averaging fragments, or `level`."""
    return self.fragments[-1][0] if self.fragments else self.level


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Which averaging follows each step, and how many happened so far.

  `sync_warmup` W: steps 1..W are synchronous SGD (post-local SGD: each
  gradient averaged over all learners, `Round.synchronous`), each counted
  as an averaging of the outermost level, and the periods count from W: with
  W = 5 and K1 = 4 the first local averaging follows step 9, as torch's
  `PeriodicModelAverager(warmup_steps=W)` does once its step counter
  starts at 1 (README, "Coming from PyTorch").

  `periods` (`core/periods.py`): the phases of periods that change over
  training, each `(start, multiplier m)`: from its start on every level
  averages every m times its `period`, counted from that start. A level's
  `period` is its period at m = 1. None: one phase, m = 1 from W. Phases
  may be added while training (adaptive periods): every answer reads the
  phases as they are when asked, and `rounds` plans one round at a time.
  """
  levels: tuple[Level, ...]  # Narrowest (most frequent) first.
  sync_warmup: int = 0
  periods: PeriodController | None = dataclasses.field(default=None,
                                                       compare=False)

  def __post_init__(self):
    for inner, outer in zip(self.levels, self.levels[1:]):
      assert outer.period % inner.period == 0, (inner, outer)
      assert set(inner.axes) <= set(outer.axes), (inner, outer)
    for level in self.levels:
      assert 0 <= level.delay < self.levels[0].period, level
      assert 1 <= level.fragments <= level.period, level
    assert self.phases[0].start == self.sync_warmup, self.phases
    assert not (self.fragmented and self.periods is not None), (
        'fragments with changing periods')

  def with_delays(self, delays: Sequence[int]) -> 'Schedule':
    """The same levels, each late by its entry of `delays` (innermost
    first; empty: none)."""
    return self._per_level('delay', delays)

  def with_fragments(self, counts: Sequence[int]) -> 'Schedule':
    """The same levels, each averaging its parameters in its entry of
    `counts` fragments (innermost first; empty: one each)."""
    return self._per_level('fragments', counts)

  def _per_level(self, field: str, values: Sequence[int]) -> 'Schedule':
    """The same levels with `field` set to each one's entry of `values`
    (innermost first; empty: unchanged)."""
    if not values:
      return self
    assert len(values) == len(self.levels), (values, self.levels)
    return dataclasses.replace(self, levels=tuple(
        dataclasses.replace(level, **{field: int(value)})
        for level, value in zip(self.levels, values)))

  @property
  def fragmented(self) -> bool:
    """Whether some level averages its parameters in fragments."""
    return any(level.fragments > 1 for level in self.levels)

  def fragment_events(self, step: int) -> tuple[tuple[Level, tuple[int, ...]],
                                                 ...]:
    """The parameter fragments each level averages after step `step`
    (1-based), innermost first: `(level, fragment indices)` for every
    level with one due, down from the widest to the first that averages
    its whole model (which replaces the levels inside it). The warmup's
    steps average every fragment of the outermost level."""
    if not self.levels:
      return ()
    if step <= self.sync_warmup:
      top = self.levels[-1]
      return ((top, tuple(range(top.fragments))),)
    done = step - self.sync_warmup
    events = []
    for level in reversed(self.levels):
      due = tuple(f for f, offset in enumerate(fragments_lib.offsets(
          level.period, level.fragments))
                  if done % level.period == offset % level.period)
      if due:
        events.append((level, due))
      if len(due) == level.fragments:
        break
    return tuple(reversed(events))

  @property
  def delayed(self) -> bool:
    """Whether some level averages late."""
    return any(level.delay for level in self.levels)

  def with_periods(self, periods: PeriodController | None) -> 'Schedule':
    """The same levels with `periods`' phases."""
    return dataclasses.replace(self, periods=periods)

  @property
  def phases(self) -> tuple[Phase, ...]:
    """The phases so far, in order; the first starts at W."""
    if self.periods is None:
      return (Phase(self.sync_warmup, 1),)
    return self.periods.phases

  def _phase_of(self, step: int) -> Phase:
    """The phase step `step` (1-based) belongs to (the first for the
    warmup's steps)."""
    phases = self.phases
    starts = [p.start for p in phases]
    return phases[max(0, bisect.bisect_left(starts, step) - 1)]

  def level_after(self, step: int) -> Level | None:
    """The averaging done after local step `step` (1-based), or None."""
    if step <= self.sync_warmup and self.levels:
      return self.levels[-1]
    phase = self._phase_of(step)
    for level in reversed(self.levels):
      if (step - phase.start) % (level.period * phase.multiplier) == 0:
        return level
    return None

  def _next_averaging(self, step: int) -> int:
    """The first step after `step` that ends with an averaging."""
    if not self.levels:
      return math.inf
    if step < self.sync_warmup:
      return step + 1
    if self.fragmented:  # One phase from W (`__post_init__`).
      done = step - self.sync_warmup
      return self.sync_warmup + min(
          done + (offset - done - 1) % level.period + 1
          for level in self.levels
          for offset in fragments_lib.offsets(level.period, level.fragments))
    phase = self._phase_of(step + 1)
    k = self.shortest_period * phase.multiplier
    return phase.start + ((step - phase.start) // k + 1) * k

  def rounds(self, start: int, stop: int,
             cut_every: Sequence[int] = ()) -> Iterator[Round]:
    """Splits steps `[start, stop)` into rounds, each compiled as one call.

    A round ends at every averaging (every multiple of the narrowest
    period K, past the warmup's steps of one), at every multiple of each
    period in `cut_every` (where the host wants to log or evaluate), and
    at `stop`. Cuts that divide K are
    replaced by their greatest common divisor, which cuts at each of them
    with rounds of one length: cuts at 4 and 6 with K = 12 would otherwise
    make rounds of 4, 2, 2 and 4 steps, two compiled programs where one
    does. With phases, K is the phase's (m times the narrowest period), and
    each round is planned when the one before has been taken.

    Delayed levels add no cuts: each round says where a window opens or
    closes in it (`Round`), wherever the cuts fall.
    """
    cuts = [p for p in cut_every if p > 0]
    step = start
    while step < stop:
      k = self.shortest_period * self._phase_of(step + 1).multiplier
      dividing = [p for p in cuts if k % p == 0]
      periods = [p for p in cuts if k % p] + (
          [math.gcd(*dividing)] if dividing else [])
      end = min([stop, self._next_averaging(step)] +
                [(step // p + 1) * p for p in periods])
      yield Round(step, end - step, self.level_after(end),
                  *self._window(step, end),
                  fragments=(self.fragment_events(end) if self.fragmented
                             else ()),
                  synchronous=bool(self.levels) and end <= self.sync_warmup)
      step = end

  def _window(self, step: int, end: int) -> tuple[int | None, Level | None]:
    """`(snapshot, delayed)` of the round `[step, end)` (`Round`)."""
    after = self._next_averaging(step)
    if not self.delayed or after == math.inf:
      return None, None
    level = self.level_after(after)
    if after <= self.sync_warmup or not level.delay:
      return None, None
    snapshot = after - level.delay  # The step after which it is taken.
    if step <= snapshot < end:
      return snapshot - step, level
    if end == after:
      return None, level  # Taken before this round, kept in the state.
    return None, None

  @property
  def shortest_period(self) -> int:
    """Steps between averagings of the narrowest level (1: none), at
    m = 1."""
    return self.levels[0].period if self.levels else 1

  def fit_cap(self, cap: int) -> int:
    """A most-steps-per-round `cap` that keeps every round one length.

    Rounds end at every averaging anyway, so a cap of at least the narrowest
    period changes nothing (0: no cap); a smaller one becomes the largest
    divisor of that period under it. A cap of 6 with K1 = 4 would otherwise
    make rounds of 4 and 2 steps, each length its own compiled program.
    With phases the cap must divide the narrowest period of every
    multiplier the run may use, K times their greatest common divisor, and
    changes nothing only from K times the largest.
    """
    if cap <= 0 or not self.levels:
      return cap
    multipliers = (self.periods.multipliers if self.periods is not None
                   else (1,))
    if cap >= self.shortest_period * max(multipliers):
      return 0
    period = self.shortest_period * math.gcd(*multipliers)
    return max(d for d in range(1, min(cap, period) + 1) if period % d == 0)

  def describe(self) -> str:
    if not self.levels:
      return 'no averaging'
    levels = ', '.join(f'{l.name} averaging over {"+".join(l.axes)} every '
                       f'{l.period} step(s)' +
                       (f' of the models {l.delay} step(s) before'
                        if l.delay else '') +
                       (f' in {l.fragments} fragments after steps '
                        f'{fragments_lib.offsets(l.period, l.fragments)}'
                        if l.fragments > 1 else '') for l in self.levels)
    if self.periods is None:
      return levels
    return f'{levels}; periods {self.periods.rule}'

  def counts(self, steps: int) -> dict[str, int]:
    """Averagings of each level done in the first `steps` steps.

    A step divisible by an outer period counts for the outer level only;
    each warmup step counts for the outermost. Each phase counts from its
    start (where the phase before ended in an outermost averaging).

    With fragments, a fragmented level's count is that of its fragment
    events, and `<level>_fragment<f>` counts fragment f's.
    """
    if self.fragmented:
      return self._fragment_counts(steps)
    warmup = min(steps, self.sync_warmup)
    counts = {level.name: 0 for level in self.levels}
    phases = self.phases
    for phase, after in zip(phases, phases[1:] + (None,)):
      end = steps if after is None else min(steps, after.start)
      n = max(0, end - phase.start)
      for i, level in enumerate(self.levels):
        counts[level.name] += n // (level.period * phase.multiplier)
        if i + 1 < len(self.levels):
          counts[level.name] -= n // (self.levels[i + 1].period *
                                      phase.multiplier)
    if self.levels:
      counts[self.levels[-1].name] += warmup
    return counts


  def _fragment_counts(self, steps: int) -> dict[str, int]:
    """`counts` of a fragmented schedule: the events repeat every
    outermost period after the warmup."""
    counts = {level.name: 0 for level in self.levels}
    for level in self.levels:
      if level.fragments > 1:
        counts.update({f'{level.name}_fragment{f}': 0
                       for f in range(level.fragments)})

    def add(step, times=1):
      for level, due in self.fragment_events(step):
        counts[level.name] += times * len(due)
        if level.fragments > 1:
          for f in due:
            counts[f'{level.name}_fragment{f}'] += times

    warmup = min(steps, self.sync_warmup)
    if warmup:
      add(1, warmup)
    period = self.levels[-1].period
    periods, rest = divmod(steps - warmup, period)
    for done in range(1, period + 1):
      add(self.sync_warmup + done, periods + (done <= rest))
    return counts


def hier_schedule(k1: int, k2: int) -> Schedule:
  """Hier-AVG: local averaging every K1 steps, global every K2 of them."""
  return Schedule((Level('local', (LOCAL,), k1),
                   Level('global', (NODE, LOCAL), k1 * k2)))



def check_delays(delays, mixes, periods, compress=()) -> list[str]:
  """Problems with `hier.delay` / `hier.delay_mix` for levels of `periods`
  (innermost first) compressed as `compress`, as lines for a UserError
  ([] when fine)."""
  depth = len(periods)
  problems = []
  for key, values in (('hier.delay', delays), ('hier.delay_mix', mixes)):
    if values and len(values) != depth:
      problems.append(
          f'{key}={tuple(values)} has {len(values)} entries but the '
          f'hierarchy has {depth} levels; give one per level, innermost '
          'first, or leave it empty.')
  if problems:
    return problems
  taus = tuple(delays) or (0,) * depth
  for i, tau in enumerate(taus):
    if tau >= periods[0]:
      problems.append(
          f'hier.delay={tuple(delays)}: level {i} is {tau} step(s) late but '
          f'some level averages every {periods[0]} steps; each delay must be '
          'below the narrowest period, so that no other averaging falls '
          'inside its window; lower it.')
  for i, (tau, kind) in enumerate(zip(taus, compress)):
    if tau and kind != 'none':
      problems.append(
          f'hier.delay is {tau} for level {i} whose hier.compress is '
          f'{kind!r}: late averaging of compressed changes is not designed '
          "yet; set one of them to 0 / 'none' for that level.")
  for i, (tau, mix) in enumerate(zip(taus, mixes)):
    if not tau and mix:
      problems.append(
          f'hier.delay_mix gives alpha={mix} to level {i}, which is not '
          'late (hier.delay 0): give it 0 there (plain averaging), or a '
          'delay.')
  return problems
