"""Hier-AVG (and its special cases K-AVG and synchronous SGD) as an algorithm.

Every learner takes plain local optimizer steps; after a round the schedule's
level (if any) replaces each group's models by the group mean, the policy
decides what else is averaged or reset, and at the outermost level an
optional outer optimizer (SlowMo / DiLoCo, `core/outer.py`) steps on the
pseudo-gradient.
"""

import dataclasses
import functools
import math

import optax

from hier_avg.core import averaging, outer
from hier_avg.core.learner import Learner, step_key
from hier_avg.core.periods import PeriodController
from hier_avg.core.policies import AveragingPolicy
from hier_avg.core.schedule import Level, Schedule
from hier_avg.core.state import TrainState
from hier_avg.core.topology import Topology
from hier_avg.runtime import communication, execution
from hier_avg.runtime.algorithm import Algorithm

# A level's event count in the metrics: `<level>_averagings`.
EVENTS = 'averagings'


def make(learner: Learner, topology: Topology, schedule: Schedule,
         policy: AveragingPolicy = AveragingPolicy(),
         outer_tx: optax.GradientTransformation | None = None,
         learner_loop: str = 'vmap', drift: bool = True,
         spread: bool = False) -> Algorithm:
  """Hier-AVG with `schedule`'s levels on `topology`'s learner grid.

  Args:
    learner: one replica's model, optimizer and data transform.
    topology: the learner grid and its device mesh.
    schedule: the averaging levels (e.g. `schedule.hier_schedule(K1, K2)`).
    policy: what happens to non-parameter state at averaging.
    outer_tx: optimizer applied at the outermost level, or None.
    learner_loop: how a device runs its block ('vmap' or 'unroll').
    drift: measure each averaging's drift: every learner's squared
      distance (of its parameters) from its group's mean, before the
      averaging; no communication.
    spread: also, at the outermost averaging, the squared distance of each
      learner's next-level group mean from the global mean (one more
      all-reduce, over the inner level's axes).
  """
  nblock = len(topology.grid_shape)
  outermost = schedule.levels[-1] if schedule.levels else None

  def local_step(state: TrainState, batch):
    def one(params, batch_stats, opt_state, rng, batch):
      return learner.step(params, batch_stats, opt_state,
                          step_key(rng, state.step), *batch)

    params, batch_stats, opt_state, loss = execution.map_block(
        one, learner_loop, nblock, state.params, state.batch_stats,
        state.opt_state, state.rng, batch)
    return state.replace(step=state.step + 1, params=params,
                         batch_stats=batch_stats, opt_state=opt_state), loss

  def after_round(state: TrainState, level: Level | None):
    if level is None:
      return state, {}
    parts = {p: getattr(state, p) for p in policy.averaged_parts}
    means = averaging.average_block(parts, level.axes, topology)
    measures = {}
    if drift:
      measures['drift'] = averaging.squared_distances(
          state.params, means['params'], nblock)
    if spread and level == outermost and len(schedule.levels) > 1:
      group_means = averaging.average_block(
          state.params, schedule.levels[-2].axes, topology)
      measures['spread'] = averaging.squared_distances(
          group_means, means['params'], nblock)
    state = policy.after_averaging(state.replace(**means))
    if outer_tx is not None and level == outermost:
      params, outer_state = execution.map_block(
          functools.partial(outer.step, outer_tx), 'vmap', nblock,
          state.params, state.outer)
      state = state.replace(params=params, outer=outer_state)
    return state, measures

  def extend_state(state: TrainState) -> TrainState:
    if outer_tx is None:
      return state
    return state.replace(outer=execution.map_block(
        functools.partial(outer.init, outer_tx), 'vmap', nblock,
        state.params))

  def channels(state: TrainState) -> dict[str, communication.Channel]:
    one = communication.one_learner(
        {p: getattr(state, p) for p in policy.averaged_parts}, nblock)
    nbytes = averaging.bytes_per_learner(one)
    grid = dict(zip(topology.axis_names, topology.grid_shape))
    return {level.name: communication.Channel(
        f'{level.name}_{EVENTS}',
        averaging.collectives_per_event(one, level.axes, topology),
        nbytes if math.prod(grid[a] for a in level.axes) > 1 else 0)
            for level in schedule.levels}

  return Algorithm(
      description=schedule.describe(), schedule=schedule,
      local_step=local_step, after_round=after_round, channels=channels,
      event_counts=schedule.counts,
      extra_state=('outer',) if outer_tx is not None else (),
      extend_state=extend_state)


def with_periods(algorithm: Algorithm,
                 periods: PeriodController) -> Algorithm:
  """`algorithm` (from `make`) averaging in `periods`' phases.

  The levels and their compiled rounds stay the same; when each averages
  and how many averaged (the counters) follow the phases.
  """
  schedule = algorithm.schedule.with_periods(periods)
  return dataclasses.replace(
      algorithm, schedule=schedule, event_counts=schedule.counts,
      description=f'{algorithm.description}; periods {periods.rule}')
