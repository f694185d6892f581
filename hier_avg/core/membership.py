"""Who takes each step and who averages: simulated outages and speeds.

An outage `(learner, first_step, last_step)` (`faults.outages`) takes the
learner out for steps `first_step..last_step` inclusive (1-based, as the
step counter): it takes no step and is left out of every averaging that
applies after one of those steps. The averaging of a group is then the
mean over its members present (torchft's `num_participants()`), given to
them only; a group with fewer members present than its level's minimum
(`hier.min_members`) skips that averaging, and its members present keep
their models.

A learner coming back (up at step t, down at t - 1) is healed before its
step t (`faults.heal`): 'nearest' gives it the current mean of its
innermost group that has a live member (one up at t - 1 and at t), or of
the next level out where its whole group was down, with that group's
mean of each part the averaging policy averages ('stale': it keeps what
it had when it went down).

With periods in time (`hier.period_unit='time'`, `time_periods`) each
learner computes only the steps of each innermost period that its speed
(`faults.speed`, `step_times`) fits, and waits out the rest: it takes no
step then, but it is up, and averages.

Everything here is a function of the step and the outages, known before
the run: the compiled rounds take it as data (`round_arrays`), so a run
with one outage and one with twenty compile the same programs, and the
plain-loop oracle reads the same outages.
"""

import dataclasses
import os
from typing import Sequence

import numpy as np

from hier_avg.core import events
from hier_avg.core.hierarchy import Hierarchy
from hier_avg.errors import UserError

HEALS = ('nearest', 'stale')
# How a group weighs its members present: equally (torchft), or by the
# samples each processed since the group's last averaging (hivemind).
WEIGHTINGS = ('uniform', 'samples')
# Each learner's compute time per step (`faults.speed`), or a file of them.
SPEEDS = ('equal', 'lognormal')
PERIOD_UNITS = ('steps', 'time')


def step_times(faults_config, num_learners: int) -> np.ndarray:
  """Each learner's compute seconds per step, [P]; raises UserError."""
  speed, base = faults_config.speed, faults_config.step_s
  if speed == 'equal':
    return np.full(num_learners, base, float)
  if speed == 'lognormal':
    rng = np.random.default_rng([faults_config.seed, 1])
    return base * np.exp(rng.normal(0, faults_config.speed_sigma,
                                    num_learners))
  if not os.path.isfile(speed):
    raise UserError(f"faults.speed={speed!r} is neither 'equal', "
                    "'lognormal' nor a file; give a file of one step time "
                    '(seconds) per learner, one per line.')
  try:
    times = np.loadtxt(speed, dtype=float, ndmin=1)
  except ValueError as e:
    raise UserError(f'faults.speed file {speed} does not read as numbers '
                    f'({str(e).splitlines()[0]}); give one step time '
                    '(seconds) per learner, one per line.') from None
  if times.shape != (num_learners,) or not np.all(times > 0):
    raise UserError(f'faults.speed file {speed} has {times.size} value(s) '
                    f'but there are {num_learners} learners; give one '
                    'step time (seconds, > 0) per learner, one per line.')
  return times


def time_periods(step_s: np.ndarray, base_s: float,
                 period: int) -> tuple[int, tuple[int, ...]]:
  """Periods in time: (the steps of an innermost period, how many of them
  each learner fits). The period lasts `period` steps of a learner of
  speed 1 (`base_s` each); a learner of step time t fits floor(period
  base_s / t) steps, and the period has as many as the fastest fits."""
  fit = np.floor(period * base_s / np.asarray(step_s) * (1 + 1e-12))
  fit = tuple(int(f) for f in fit)
  return max(max(fit), 1), fit


@dataclasses.dataclass(frozen=True)
class Outage:
  learner: int
  first: int  # First step it does not take (1-based).
  last: int   # Last step it does not take.


def parse_outages(value) -> tuple[Outage, ...]:
  """`faults.outages` (a tuple of (learner, first_step, last_step)) as
  outages; raises ValueError with a one-line reason."""
  found = []
  for entry in value:
    if (not isinstance(entry, (tuple, list)) or len(entry) != 3 or
        not all(isinstance(v, int) and not isinstance(v, bool)
                for v in entry)):
      raise ValueError(f'{entry!r} is not (learner, first_step, last_step), '
                       'three integers')
    found.append(Outage(*entry))
  return tuple(found)


def check_outages(outages: Sequence[Outage], num_learners: int) -> list[str]:
  """Problems with `outages` for a grid of `num_learners`, as lines (one
  per problem; [] when fine)."""
  problems = []
  for o in outages:
    where = f'faults.outages entry ({o.learner}, {o.first}, {o.last})'
    if not 0 <= o.learner < num_learners:
      problems.append(f'{where} names learner {o.learner}, but the learners '
                      f'are 0..{num_learners - 1}; give an existing id.')
    elif o.first < 1:
      problems.append(f'{where} starts at step {o.first}; steps count from '
                      '1.')
    elif o.last < o.first:
      problems.append(f'{where} ends before it starts; give last_step >= '
                      'first_step.')
  if problems:
    return problems
  # Every learner down at once leaves nobody to train or to heal from.
  bounds = sorted({o.first for o in outages})
  for step in bounds:
    down = {o.learner for o in outages if o.first <= step <= o.last}
    if len(down) == num_learners:
      problems.append(
          f'faults.outages take every learner down at step {step}; leave '
          'at least one learner up at every step.')
      break
  return problems


@dataclasses.dataclass(frozen=True)
class Membership:
  """Who is up at each step, from the outages, and who takes it; learners
  by grid id; and the rules of averaging with members missing."""
  outages: tuple[Outage, ...]
  num_learners: int
  heal: str = 'nearest'
  min_members: tuple[int, ...] = ()  # Per level, innermost first (1 each).
  weighting: str = 'uniform'         # `WEIGHTINGS`.
  # Periods in time (`hier.period_unit='time'`): the steps of each
  # innermost period (the fastest learner's), and how many of them each
  # learner's speed fits in one (it waits out the rest). 0: in steps.
  per_period: int = 0
  steps_fit: tuple[int, ...] = ()

  def minimum(self, depth: int) -> int:
    return self.min_members[depth] if self.min_members else 1

  def periods(self, periods: Sequence[int]) -> tuple[int, ...]:
    """The levels' `periods` (steps of a learner of speed 1) in the run's
    steps: with periods in time, each innermost one has `per_period`."""
    if not self.per_period:
      return tuple(periods)
    return tuple(p // periods[0] * self.per_period for p in periods)

  def up(self, first: int, length: int) -> np.ndarray:
    """[length, P] bool: whether each learner takes steps first + 1 ..
    first + length."""
    steps = np.arange(first + 1, first + length + 1)[:, None]
    up = np.ones((length, self.num_learners), bool)
    for o in self.outages:
      up[:, o.learner] &= ~((o.first <= steps[:, 0]) &
                            (steps[:, 0] <= o.last))
    return up

  def takes(self, first: int, length: int) -> np.ndarray:
    """[length, P] bool: whether each learner computes steps first + 1 ..
    first + length: it is up and, with periods in time, the step is among
    the first ones its speed fits in the innermost period."""
    takes = self.up(first, length)
    if self.per_period:
      slot = (np.arange(first, first + length) % self.per_period)[:, None]
      takes &= slot < np.asarray(self.steps_fit)[None, :]
    return takes

  def returning(self, first: int, length: int) -> np.ndarray:
    """[length, P] bool: learners up at a step and down at the one before
    (healed before it; none with `heal='stale'`)."""
    up = self.up(first - 1, length + 1) if first > 0 else np.concatenate(
        [np.ones((1, self.num_learners), bool), self.up(0, length)])
    back = up[1:] & ~up[:-1]
    return back if self.heal == 'nearest' else np.zeros_like(back)

  def lost_steps(self, steps: int) -> int:
    """Learner-steps not taken in the first `steps` steps."""
    return int((~self.up(0, steps)).sum())


class Tally:
  """What the outages cost in a run's first steps: learner-steps not taken
  ('lost_learner_steps') and, per level, the group averagings skipped
  ('<level>_skipped': events after which a group had fewer members up
  than its minimum; learners by grid id, level i's groups runs of
  `group_sizes[i]`). Each step is counted once, as the run asks for
  later steps (every row asks): per step, the totals so far."""

  def __init__(self, membership: Membership, schedule,
               group_sizes: Sequence[int]):
    self.membership, self.schedule = membership, schedule
    self.group_sizes = tuple(group_sizes)
    self.names = ['lost_learner_steps'] + [
        f'{level.name}_skipped' for level in schedule.levels]
    self._totals = [np.zeros(len(self.names), np.int64)]  # After 0 steps.

  def at(self, steps: int) -> dict[str, int]:
    """The totals of the first `steps` steps."""
    done = len(self._totals) - 1
    if steps > done:
      up = self.membership.up(done, steps - done)
      for step in range(done + 1, steps + 1):
        self._totals.append(self._totals[-1] + self._count(
            step, up[step - done - 1]))
    return {name: int(n) for name, n in zip(self.names, self._totals[steps])}

  def _count(self, step: int, up) -> np.ndarray:
    found = np.zeros(len(self.names), np.int64)
    found[0] = (~up).sum()
    depth = {level.name: i for i, level in enumerate(self.schedule.levels)}
    for event in events.applied_after(self.schedule, step):
      i = depth[event.level.name]
      present = up.reshape(-1, self.group_sizes[i]).sum(axis=1)
      found[1 + i] += (present < self.membership.minimum(i)).sum()
    return found


def round_arrays(membership: Membership, first: int, length: int):
  """What a round of steps first + 1 .. first + length takes as data:
  (takes [length, P], up [length, P], returning [length, P], any
  returning [length])."""
  returning = membership.returning(first, length)
  return (membership.takes(first, length), membership.up(first, length),
          returning, returning.any(axis=1))


def check(faults_config, hier_config) -> list[str]:
  """Problems with the `faults` section and `hier.min_members` for the
  hierarchy of `hier_config`, as lines; [] when fine. Where outages are
  not simulated yet (a combination refused) says so here, the one place."""
  try:
    outages = parse_outages(faults_config.outages)
  except ValueError as e:
    return [f'faults.outages: {e}.']
  problems = []
  minimum = tuple(hier_config.min_members)
  if hier_config.algorithm == 'hier':
    hierarchy = Hierarchy.from_config(hier_config)
    sizes = hierarchy.group_sizes
    if minimum and len(minimum) != len(sizes):
      problems.append(
          f'hier.min_members={minimum} has {len(minimum)} entries but the '
          f'hierarchy has {len(sizes)} levels; give one per level, innermost '
          'first, or leave it empty.')
    elif any(m > s for m, s in zip(minimum, sizes)):
      problems.append(
          f'hier.min_members={minimum}: a level asks for more members than '
          f'its groups have ({sizes}); give at most the group size.')
  drawn = bool(faults_config.node_mtbf_steps and
               faults_config.node_downtime_steps)
  in_time = hier_config.period_unit == 'time'
  if not outages and not drawn and not in_time:
    return problems
  problems += check_outages(outages, hier_config.num_learners)
  what = ('faults.outages' if outages or drawn else
          "hier.period_unit='time'")
  late = any(hier_config.delay)
  for refused, why in (
      (hier_config.algorithm != 'hier', f'hier.algorithm='
       f'{hier_config.algorithm!r} (use \'hier\')'),
      (any(k != 'none' for k in hier_config.compress), 'hier.compress'),
      (late, 'hier.delay'),
      (hier_config.sync_warmup_steps > 0, 'hier.sync_warmup_steps'),
      (hier_config.period_schedule == 'adaptive' or
       (in_time and hier_config.period_schedule != 'constant'),
       f'hier.period_schedule={hier_config.period_schedule!r}'),
      (in_time and hier_config.outer_lr_schedule != 'constant',
       f'hier.outer_lr_schedule={hier_config.outer_lr_schedule!r}')):
    if refused:
      problems.append(f'{what} are not simulated with {why} yet; leave '
                      'one of the two out.')
  return problems


def draw_node_outages(nodes: Sequence[Sequence[int]], mtbf: float,
                      downtime: int, steps: int, seed: int,
                      given: Sequence[Outage] = ()) -> tuple[Outage, ...]:
  """Outages of whole nodes (`nodes`: each node's learner ids) over steps
  1..`steps`: each node fails after a number of up steps drawn from an
  exponential of mean `mtbf` (at least 1; its own stream of `seed`) and
  is down for `downtime` steps. A failure that would leave no learner up
  (with the others and `given`) is not drawn; the node goes on."""
  failures = []
  for n, learners in enumerate(nodes):
    rng = np.random.default_rng([seed, n])
    step = 0
    while True:
      step += max(1, int(np.ceil(rng.exponential(mtbf))))
      if step > steps:
        break
      failures.append((step, n))
      step += downtime
  drawn = []
  for first, n in sorted(failures):
    new = [Outage(j, first, first + downtime - 1) for j in nodes[n]]
    total = sum(len(node) for node in nodes)
    if not check_outages(tuple(given) + tuple(drawn) + tuple(new), total):
      drawn += new
  return tuple(drawn)


def from_config(faults_config, hier_config,
                steps: int) -> Membership | None:
  """The run's membership over `steps` steps (the outages given and those
  drawn); None where no outage is simulated (every learner takes every
  step: the plain programs)."""
  outages = parse_outages(faults_config.outages)
  if faults_config.node_mtbf_steps and faults_config.node_downtime_steps:
    sizes = Hierarchy.from_config(hier_config).group_sizes
    node = sizes[-2] if len(sizes) > 1 else 1
    nodes = [range(i, i + node)
             for i in range(0, hier_config.num_learners, node)]
    outages += draw_node_outages(
        nodes, faults_config.node_mtbf_steps,
        faults_config.node_downtime_steps, steps, faults_config.seed,
        outages)
  per_period, fit = 0, ()
  if hier_config.period_unit == 'time':
    per_period, fit = time_periods(
        step_times(faults_config, hier_config.num_learners),
        faults_config.step_s, Hierarchy.from_config(hier_config).periods[0])
  elif not outages:
    return None
  return Membership(outages, hier_config.num_learners, faults_config.heal,
                    tuple(hier_config.min_members), hier_config.weighting,
                    per_period, fit)
