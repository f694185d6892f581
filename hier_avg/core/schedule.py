"""When learners average, as a list of levels.

A level is a set of grid axes to average over and a period in local steps.
Hier-AVG has two: local (axis 'local', every K1 steps) and global (all axes,
every K1*K2 steps). Periods nest (each divides the next), and when several
levels fall on the same step the widest one wins: a global averaging replaces
the local one of that step. A third level (pods of nodes) is one more entry.

A level may average late (`Level.delay` tau, `hier.delay`) and in
fragments of its parameters (`Level.fragments` F, `hier.fragments`,
`core/fragments.py`); what each averaging does, and when, are its events
(`core/events.py`): the rounds end where events apply and list those they
start and apply, and the counters count them. The periods may change over
training in phases (`core/periods.py`), which every answer reads as they
are when asked.
"""

import bisect
import dataclasses
import math
from typing import Iterator, Sequence

from hier_avg.core import events as events_lib
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
  """Local steps `[first, first + length)`, then the averaging events
  applied after its last step (`applies`, innermost first; `level` is the
  widest of them, None for none).

  A late event (`Level.delay` tau > 0) starts tau steps before it applies:
  `starts` lists, by the steps of the round taken before it, the events
  whose collective starts then, on the models as they are (the steps
  after do not depend on it). One that applies in a later round is kept
  in the state in between. Warmup rounds (`synchronous`) have no events:
  their steps average the gradients.
  """
  first: int
  length: int
  level: Level | None
  applies: tuple[events_lib.Event, ...] = ()
  starts: tuple[tuple[int, tuple[events_lib.Event, ...]], ...] = ()
  # A step of the synchronous warmup (`Schedule.sync_warmup`): synchronous
  # SGD, every gradient averaged over all learners before the update, so
  # `level` (the outermost) finds the models already equal.
  synchronous: bool = False

  @property
  def end(self) -> int:
    return self.first + self.length


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
      assert 0 <= level.delay < level.period, level
      assert 1 <= level.fragments <= level.period, level
    assert self.phases[0].start == self.sync_warmup, self.phases

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
  def has_late_levels(self) -> bool:
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

  def phase_of(self, step: int) -> Phase:
    """The phase step `step` (1-based) belongs to (the first for the
    warmup's steps)."""
    phases = self.phases
    starts = [p.start for p in phases]
    return phases[max(0, bisect.bisect_left(starts, step) - 1)]

  def level_after(self, step: int) -> Level | None:
    """The widest level averaging after local step `step` (1-based), or
    None (the outermost for the warmup's steps)."""
    if step <= self.sync_warmup and self.levels:
      return self.levels[-1]
    applied = events_lib.applied_after(self, step)
    return applied[-1].level if applied else None

  def ends_outermost_period(self, round_: Round) -> bool:
    """Whether `round_` ends with the outermost level's whole averaging
    (its last fragment's event, or a warmup step), where a new phase of
    periods may start."""
    top = self.levels[-1] if self.levels else None
    return round_.level == top and top is not None and (
        round_.synchronous or any(event.level == top and event.closes_period
                                  for event in round_.applies))

  def _next_averaging(self, step: int) -> int:
    """The first step after `step` that ends with an averaging event
    (phases start at the outermost level's averagings, so the next one is
    in the phase of `step + 1`)."""
    if not self.levels:
      return math.inf
    if step < self.sync_warmup:
      return step + 1
    phase = self.phase_of(step + 1)
    done = step - phase.start
    return phase.start + min(
        done + (offset - done - 1) % period + 1
        for level in self.levels
        for period in [level.period * phase.multiplier]
        for offset in fragments_lib.offsets(period, level.fragments))

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
      k = self.shortest_period * self.phase_of(step + 1).multiplier
      dividing = [p for p in cuts if k % p == 0]
      periods = [p for p in cuts if k % p] + (
          [math.gcd(*dividing)] if dividing else [])
      end = min([stop, self._next_averaging(step)] +
                [(step // p + 1) * p for p in periods])
      yield Round(step, end - step, self.level_after(end),
                  events_lib.applied_after(self, end),
                  tuple((s - step, started) for s in range(step, end)
                        if (started := events_lib.started_after(self, s))),
                  synchronous=bool(self.levels) and end <= self.sync_warmup)
      step = end

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
    """Averaging events of each level in the first `steps` steps (and of
    each fragment f of a fragmented level, `<level>_fragment<f>`).

    Per phase (counted from its start; `Schedule.phases`), fragment f of
    a level of period T (times the phase's multiplier) applies once at
    its offset o_f in each period (`fragments.offsets`), except that the
    last one (o = T) is hidden wherever a wider level of one fragment
    averages the whole model. Each warmup step counts one event of every
    fragment of the outermost level.
    """
    counts = {}
    warmup = min(steps, self.sync_warmup)
    phases = self.phases
    for i, level in enumerate(self.levels):
      wider = [l.period for l in self.levels[i + 1:] if l.fragments == 1]
      per_fragment = [warmup if level is self.levels[-1] else 0] * (
          level.fragments)
      for phase, after in zip(phases, phases[1:] + (None,)):
        n = max(0, (steps if after is None else min(steps, after.start)) -
                phase.start)
        period = level.period * phase.multiplier
        for f, offset in enumerate(fragments_lib.offsets(period,
                                                         level.fragments)):
          per_fragment[f] += (n - offset + period) // period
        if wider:
          per_fragment[-1] -= n // (min(wider) * phase.multiplier)
      counts[level.name] = sum(per_fragment)
      if level.fragments > 1:
        counts.update({f'{level.name}_fragment{f}': count
                       for f, count in enumerate(per_fragment)})
    return counts


def hier_schedule(k1: int, k2: int) -> Schedule:
  """Hier-AVG: local averaging every K1 steps, global every K2 of them."""
  return Schedule((Level('local', (LOCAL,), k1),
                   Level('global', (NODE, LOCAL), k1 * k2)))



def check_delays(delays, mixes, periods, fragments=(),
                 least_decided_multiplier=None) -> list[str]:
  """Problems with `hier.delay` / `hier.delay_mix` for levels of `periods`
  (innermost first) in `fragments` (F per level; empty: one), as lines
  for a UserError ([] when fine).

  A level's averaging must apply before its next one starts (one in
  flight per level and fragment), so each delay is below its own level's
  period. Any other level may average inside the window; each learner
  keeps what it did since the snapshot, those averagings included.
  Compression, fragments and phases of periods known up front compose
  with it (`core/exchange.py`). Periods decided while training
  (`least_decided_multiplier`: the smallest multiplier such a phase may
  take; None: none are) start a phase at an outermost averaging, so a
  late event applying in it must also start in it: tau below the
  phase's first event, floor(T m / F) steps in.
  """
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
  counts = tuple(fragments) or (1,) * depth
  for i, (tau, period, count) in enumerate(zip(taus, periods, counts)):
    if tau >= period:
      problems.append(
          f'hier.delay={tuple(delays)}: level {i} is {tau} step(s) late but '
          f'averages every {period} steps, so its next averaging would start '
          'before this one applied; give it less than its period.')
    elif (least_decided_multiplier is not None and
          tau >= period * least_decided_multiplier // count):
      first = period * least_decided_multiplier // count
      problems.append(
          f'hier.delay={tuple(delays)}: level {i} is {tau} step(s) late, '
          f'but a phase of adaptive periods may average it {first} step(s) '
          'after the phase starts, which is decided only then: give it a '
          f'delay below {first}, fewer fragments, or a larger '
          'hier.adaptive_min.')
  for i, (tau, mix) in enumerate(zip(taus, mixes)):
    if not tau and mix:
      problems.append(
          f'hier.delay_mix gives alpha={mix} to level {i}, which is not '
          'late (hier.delay 0): give it 0 there (plain averaging), or a '
          'delay.')
  return problems
