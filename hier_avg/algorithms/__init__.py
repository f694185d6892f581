"""The algorithms a run can train with, by `hier.algorithm`.

Each is a module whose `make(...)` returns a `runtime.algorithm.Algorithm`:
`hierarchical` (Hier-AVG, with K-AVG and synchronous SGD as special cases)
and `asgd` (simulated asynchronous SGD, the papers' baseline).
"""

import dataclasses

from hier_avg.algorithms import asgd, hierarchical
from hier_avg.core import outer, periods
from hier_avg.core.learner import Learner
from hier_avg.core.membership import Membership
from hier_avg.core.policies import AveragingPolicy
from hier_avg.core.hierarchy import Hierarchy
from hier_avg.core.topology import Topology
from hier_avg.runtime.algorithm import Algorithm

ALGORITHMS = ('hier', 'asgd')


def updates_per_step(hier_config, num_learners: int) -> int:
  """Optimizer updates per local step (ASGD's server makes P of them)."""
  return num_learners if hier_config.algorithm == 'asgd' else 1


def outer_steps(hier_config, num_steps: int,
                steps_per_epoch: int) -> int | None:
  """The outer steps (outermost averagings) of a run of `num_steps`
  steps; None where they are not known before training ('adaptive'
  periods, which follow the loss) or there is no averaging.

  'step' periods are known up front: their phases are counted.
  """
  if hier_config.algorithm != 'hier':
    return None
  schedule = Hierarchy.from_config(hier_config).schedule()
  if not schedule.levels or hier_config.period_schedule == 'adaptive':
    return None
  controller = periods.from_config(hier_config, schedule.sync_warmup,
                                   schedule.levels[-1].period,
                                   steps_per_epoch)
  counts = schedule.with_periods(controller).counts(num_steps)
  return counts[schedule.levels[-1].name]


def from_config(hier_config, learner: Learner, topology: Topology,
                learner_loop: str, num_steps: int, steps_per_epoch: int,
                membership: Membership | None = None) -> Algorithm:
  """The `hier` section's algorithm on `topology`, for a run of
  `num_steps` local steps (an outer lr schedule spans its outer steps),
  with `membership`'s simulated outages (`core/membership.py`)."""
  if hier_config.algorithm == 'asgd':
    return asgd.make(learner, topology, hier_config.staleness, learner_loop)
  hierarchy = Hierarchy.from_config(hier_config)
  if membership is not None:  # Periods in time: in the run's steps.
    hierarchy = dataclasses.replace(
        hierarchy, periods=membership.periods(hierarchy.periods))
  outer_tx = outer.make_outer_optimizer(
      hier_config, outer_steps(hier_config, num_steps, steps_per_epoch))
  algorithm = hierarchical.make(
      learner, topology, hierarchy.schedule(),
      AveragingPolicy.from_config(hier_config), outer_tx, learner_loop,
      hier_config.measure_drift, hier_config.measure_spread,
      hier_config.compress, hier_config.error_feedback, hier_config.delay,
      hier_config.delay_mix, hier_config.fragments, membership)
  unused = (' (hier.levels replaces hier.group_size, hier.k1 and hier.k2: '
            'unused)' if hier_config.levels else '')
  late = (f'; late by {tuple(hier_config.delay)} step(s) per level'
          if any(hier_config.delay) else '')
  streamed = (f'; parameters in {tuple(hier_config.fragments)} fragments '
              'per level' if any(f > 1 for f in hier_config.fragments)
              else '')
  if membership is not None:
    streamed += (f'; {len(membership.outages)} simulated outage(s), heal '
                 f'{membership.heal!r}')
    if membership.per_period:
      streamed += (f'; periods in time: learners fit '
                   f'{membership.steps_fit} of every '
                   f'{membership.per_period} steps')
  return dataclasses.replace(
      algorithm,
      description=f'{hierarchy.describe()}{late}{streamed}{unused}')


def with_period_schedule(algorithm: Algorithm, hier_config,
                         steps_per_epoch: int
                         ) -> tuple[Algorithm, periods.PeriodController | None]:
  """`algorithm` with `hier.period_schedule`'s periods, and the controller
  the train loop feeds (None for 'constant': `algorithm` unchanged)."""
  schedule = algorithm.schedule
  controller = None
  if hier_config.algorithm == 'hier' and schedule.levels:
    controller = periods.from_config(hier_config, schedule.sync_warmup,
                                     schedule.levels[-1].period,
                                     steps_per_epoch)
  if controller is None:
    return algorithm, None
  return hierarchical.with_periods(algorithm, controller), controller
