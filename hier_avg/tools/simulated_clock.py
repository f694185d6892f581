"""A simulated wall clock for runs with simulated faults and stragglers.

Each learner's compute time per step is fixed for the run
(`faults.speed`: equal, lognormal around `faults.step_s`, or read from a
file); each averaging costs a ring all-reduce of the model's bytes among
its group over that level's link (`faults.link_gbps`, per level; the
cost model's `ring_allreduce_s`). Periods count steps: every learner
takes the same steps, so a group's averaging starts when its slowest
member present gets there, and the clock of its members present is then
that time plus the averaging's. A learner down keeps its clock; one that
comes back joins at the clock of the live members it heals from (its
nearest group with one). Computed on the host from the schedule and the
outages alone, so it costs the training nothing.

`simulated_seconds` is the latest learner's clock; `goodput` the useful
learner-steps (those taken) over the learner-seconds (learners times the
simulated seconds).
"""

import dataclasses

import numpy as np

from hier_avg.core import events
from hier_avg.core.membership import SPEEDS, Membership, step_times
from hier_avg.errors import UserError
from hier_avg.tools import cost_model

@dataclasses.dataclass(frozen=True)
class SimulatedClock:
  step_s: np.ndarray                 # [P] compute seconds per step.
  group_sizes: tuple[int, ...]       # Per level, innermost first.
  averaging_s: tuple[float, ...]     # Per level: one averaging's seconds.
  membership: Membership | None = None

  def run(self, schedule, steps: int) -> list[dict[str, float]]:
    """The clock after each step 1..`steps`: [{'simulated_seconds',
    'goodput'}] (index s - 1 for step s)."""
    p = len(self.step_s)
    up = (np.ones((steps, p), bool) if self.membership is None
          else self.membership.up(0, steps))
    takes = (up if self.membership is None
             else self.membership.takes(0, steps))
    depth = {level.name: i for i, level in enumerate(schedule.levels)}
    clock, taken, found = np.zeros(p), 0, []
    for step in range(1, steps + 1):
      now = up[step - 1]
      before = up[step - 2] if step > 1 else np.ones(p, bool)
      for j in np.flatnonzero(now & ~before):
        clock[j] = self._join(clock, j, now & before)
      clock = clock + np.where(takes[step - 1], self.step_s, 0.0)
      taken += int(takes[step - 1].sum())
      for event in events.applied_after(schedule, step):
        i = depth[event.level.name]
        minimum = 1 if self.membership is None else self.membership.minimum(i)
        for start in range(0, p, self.group_sizes[i]):
          members = np.arange(start, start + self.group_sizes[i])
          present = members[now[members]]
          if present.size >= minimum and present.size:
            clock[present] = clock[present].max() + self.averaging_s[i]
      latest = float(clock.max())
      found.append({'simulated_seconds': latest,
                    'goodput': taken / (p * latest) if latest else 0.0})
    return found

  def _join(self, clock, j: int, live) -> float:
    """The clock a learner coming back joins at: its nearest group's
    live members' latest (its own where none is live)."""
    for size in self.group_sizes:
      start = j // size * size
      group = np.arange(start, start + size)
      if live[group].any():
        return float(clock[group[live[group]]].max())
    return float(clock[j])


def averaging_seconds(faults_config, group_sizes, model_bytes: int):
  """Per level, one averaging's seconds: a ring all-reduce of
  `model_bytes` among the group over that level's `faults.link_gbps`
  (with `faults.link_latency_us`); 0 where no link is given."""
  gbps = tuple(faults_config.link_gbps) or (0,) * len(group_sizes)
  return tuple(
      0.0 if not rate else cost_model.ring_allreduce_s(
          cost_model.Link(faults_config.link_latency_us * 1e-6,
                          rate * 1e9 / 8), size, model_bytes)
      for rate, size in zip(gbps, group_sizes))


def check(faults_config, hier_config) -> list[str]:
  """Problems with the clock's keys, as lines ([] when fine)."""
  problems = []
  speed = faults_config.speed
  if speed not in SPEEDS:
    try:
      step_times(faults_config, hier_config.num_learners)
    except UserError as e:
      problems.append(str(e))
  gbps = tuple(faults_config.link_gbps)
  depth = (len(hier_config.levels) if hier_config.levels else 2)
  if gbps and len(gbps) != depth:
    problems.append(
        f'faults.link_gbps={gbps} has {len(gbps)} entries but the hierarchy '
        f'has {depth} levels; give one per level, innermost first, or leave '
        'it empty.')
  clocked = ([f'faults.speed={speed!r}'] if speed != 'equal' else []) + (
      [f'faults.link_gbps={gbps}'] if gbps else [])
  if clocked and (hier_config.algorithm != 'hier' or
                  hier_config.period_schedule == 'adaptive'):
    problems.append(
        f'{" and ".join(clocked)} need the averagings known before the run '
        "(the simulated clock); use hier.algorithm='hier' with a "
        "'constant' or 'step' hier.period_schedule, or faults.speed='equal' "
        'and no faults.link_gbps.')
  return problems


def from_config(faults_config, engine, steps: int, model_bytes: int):
  """The clock after each of a run's `steps` steps (`SimulatedClock.run`)
  of `engine`, whose learners' models take `model_bytes` each; None where
  nothing is simulated (no outage, equal speeds, no link given: the
  metrics stay today's)."""
  membership = engine.algorithm.membership
  if (membership is None and faults_config.speed == 'equal' and
      not faults_config.link_gbps):
    return None
  sizes = engine.level_group_sizes
  clock = SimulatedClock(
      step_times(faults_config, engine.topology.num_learners), sizes,
      averaging_seconds(faults_config, sizes, model_bytes), membership)
  return clock.run(engine.schedule, steps)
