"""Hier-AVG (and its special cases K-AVG and synchronous SGD) as an algorithm.

Every learner takes plain local optimizer steps (the warmup's are
synchronous SGD: gradients averaged before the update); the schedule's
averaging events (`core/events.py`) each run their level's exchange
(`core/exchange.py`): compressed or not, on time or late, the whole model
or a fragment, with an outer optimizer at the outermost level, all in any
combination.
"""

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from hier_avg.core import averaging, hierarchy
from hier_avg.core.events import Event
from hier_avg.core import exchange as exchange_lib
from hier_avg.core.exchange import Exchange, LevelChain, Measures
from hier_avg.core.learner import Learner, step_key
from hier_avg.core.membership import Membership
from hier_avg.core.periods import PeriodController
from hier_avg.core.policies import AveragingPolicy
from hier_avg.core.presence import Presence
from hier_avg.core.schedule import Schedule
from hier_avg.core.state import TrainState
from hier_avg.core.topology import NODE, Topology
from hier_avg.runtime import communication, execution
from hier_avg.runtime.algorithm import Algorithm

# A level's event count in the metrics: `<level>_averagings`.
EVENTS = 'averagings'


def make(learner: Learner, topology: Topology, schedule: Schedule,
         policy: AveragingPolicy = AveragingPolicy(),
         outer_tx: optax.GradientTransformation | None = None,
         learner_loop: str = 'vmap', drift: bool = True,
         spread: bool = False, compress: Sequence[str] = (),
         error_feedback: Sequence[bool] = (), delay: Sequence[int] = (),
         delay_mix: Sequence[float] = (),
         fragments: Sequence[int] = (),
         membership: Membership | None = None) -> Algorithm:
  """Hier-AVG with `schedule`'s levels on `topology`'s learner grid.

  Per level, innermost first (empty: the plain level): `compress` 'none',
  'bfloat16', 'int8' or 'int4' (`core/compression.py`), `error_feedback`,
  `delay` tau (`hier.delay`), `delay_mix` alpha (torchft's rule; None:
  keep the progress), `fragments` F (`core/fragments.py`). `outer_tx`:
  the outer optimizer at the outermost level, or None. `drift` / `spread`:
  measure each averaging (`averaging.squared_distances`). `membership`:
  simulated outages and the rules of averaging without everyone
  (`core/membership.py`), or None.
  """
  schedule = schedule.with_delays(delay).with_fragments(fragments)
  exchange = _exchange(schedule, topology, policy, outer_tx, drift, spread,
                       compress, error_feedback, delay_mix)
  if membership is not None:
    exchange = dataclasses.replace(exchange, presence=Presence(
        topology, schedule.levels, membership, policy))
  steps = _Steps(learner, topology, learner_loop, exchange)
  extra = (('outer',) if outer_tx is not None else ()) + (
      ('comm',) if exchange.compressed or schedule.has_late_levels else ()
  ) + (('members',) if membership is not None else ())
  return Algorithm(
      description=schedule.describe(), schedule=schedule,
      local_step=(steps.local if membership is None
                  else exchange.presence.step(steps.local)),
      sync_step=steps.synchronous, membership=membership,
      after_sync=steps.after_synchronous, start=exchange.start,
      apply=exchange.apply, keep=exchange.keep, kept=exchange.kept,
      channels=functools.partial(_channels, exchange),
      event_counts=schedule.counts, extra_state=extra,
      extend_state=exchange.init)


def _exchange(schedule, topology, policy, outer_tx, drift, spread, compress,
              error_feedback, delay_mix) -> Exchange:
  """Each level's chain from the per-level options."""
  levels = schedule.levels
  depth = len(levels)
  kinds = hierarchy.per_level(compress, depth, 'none')
  feedback = hierarchy.per_level(error_feedback, depth, False)
  mixes = hierarchy.per_level(delay_mix, depth, None)
  chains = tuple(
      LevelChain(level, levels[i - 1].axes if i else (), kind, on,
                 mix if level.delay else None)
      for i, (level, kind, on, mix) in enumerate(zip(levels, kinds,
                                                     feedback, mixes)))
  return Exchange(schedule, chains, topology, policy, outer_tx,
                  Measures(topology, levels, drift, spread))


@dataclasses.dataclass(frozen=True)
class _Steps:
  """A device block's learner steps: local, and the warmup's synchronous
  ones with the outermost level's averaging after them."""
  learner: Learner
  topology: Topology
  learner_loop: str
  exchange: Exchange

  @property
  def nblock(self) -> int:
    return self.exchange.nblock

  def local(self, state: TrainState, batch):
    def one(params, batch_stats, opt_state, rng, batch):
      return self.learner.step(params, batch_stats, opt_state,
                               step_key(rng, state.step), *batch)

    params, batch_stats, opt_state, loss = execution.map_block(
        one, self.learner_loop, self.nblock, state.params,
        state.batch_stats, state.opt_state, state.rng, batch)
    return state.replace(step=state.step + 1, params=params,
                         batch_stats=batch_stats, opt_state=opt_state), loss

  def synchronous(self, state: TrainState, batch):
    """A step of the warmup's synchronous SGD: every learner's gradient
    averaged over all learners before its optimizer update, as DDP's
    all-reduce does, so the learners (equal before) leave it with equal
    models and optimizer states."""
    def gradients(params, batch_stats, rng, batch):
      return self.learner.loss_and_grads(params, batch_stats,
                                         step_key(rng, state.step), *batch)

    loss, batch_stats, grads = execution.map_block(
        gradients, self.learner_loop, self.nblock, state.params,
        state.batch_stats, state.rng, batch)
    grads = averaging.average_block(grads, self.exchange.outermost.axes,
                                    self.topology)
    params, opt_state = execution.map_block(
        self.learner.apply_gradients, self.learner_loop, self.nblock,
        state.params, state.opt_state, grads)
    return state.replace(step=state.step + 1, params=params,
                         batch_stats=batch_stats, opt_state=opt_state), loss

  def after_synchronous(self, state: TrainState):
    """The outermost level's averaging after a synchronous step: the
    models and optimizer states are equal already (the policy's reset does
    not apply: synchronous SGD keeps its momentum); the other averaged
    parts average, and every fragment's event takes its outer step and
    restarts the anchors from the common model. The drift is zero."""
    exchange, top = self.exchange, self.exchange.outermost
    rest = {p: v for p, v in exchange.rest_of(state).items()
            if p != 'opt_state'}
    state = state.replace(**averaging.average_block(rest, top.axes,
                                                    self.topology))
    chain = exchange.chain(top)
    for f in range(top.fragments):
      event = Event(top, f, 0, 0)
      now = exchange.leaves_of(state.params, event)
      target, outer_state = exchange.outer_step(
          state, event, exchange.kept_once(now, top.axes).value)
      state = exchange.settle(state.replace(params=exchange.with_leaves(
          state.params, event, chain.merge(target, now, None, False))),
                              event, target, outer_state=outer_state)
    zeros = jnp.zeros(state.rng.shape, jnp.float32)  # One a learner.
    return state, {name: zeros for name in exchange.measures.names(top)}


def _channels(exchange: Exchange,
              state: TrainState) -> dict[str, communication.Channel]:
  """What one event of each level costs (fragmented levels: each
  fragment's event)."""
  topology, policy = exchange.topology, exchange.policy
  nblock = exchange.nblock
  one = communication.one_learner(
      {p: getattr(state, p) for p in policy.averaged_parts}, nblock)
  rest = {p: v for p, v in one.items() if p != 'params'}
  grid = dict(zip(topology.axis_names, topology.grid_shape))
  size = lambda axes: math.prod(grid[a] for a in axes)

  def channel(chain: LevelChain, leaves, with_rest: bool, name: str):
    level = chain.level
    sent = [leaves] + ([rest] if with_rest else [])
    if size(level.axes) == 1:
      return communication.Channel(name, 0, 0)
    moved = exchange_lib.event_bytes(averaging.value_groups(leaves),
                                     chain.compress, size(chain.inner_axes))
    inside = moved.inside
    nbytes = moved.between + averaging.bytes_per_learner(sent[1:])
    if chain.compress == 'none':
      # On time the other parts go with the parameters (one collective
      # per dtype); late, at the window's end.
      collectives = (sum(averaging.collectives_per_event(
          part, level.axes, topology) for part in sent) if level.delay
                     else averaging.collectives_per_event(sent, level.axes,
                                                          topology))
    else:
      collectives = (averaging.compressed_collectives_per_event(
          leaves, level.axes, chain.inner_axes, topology, chain.compress,
          chain.error_feedback) + sum(averaging.collectives_per_event(
              part, level.axes, topology) for part in sent[1:]))
    between = nbytes if NODE in level.axes else 0
    return communication.Channel(name, collectives, inside + nbytes,
                                 between_hosts_bytes_per_learner=between)

  def level_channel(chain: LevelChain):
    level = chain.level
    leaves = jax.tree.leaves(one['params'])
    parts = exchange.parts(state.params, level)
    if level.fragments == 1:
      return channel(chain, leaves, True, f'{level.name}_{EVENTS}')
    return communication.Channel(f'{level.name}_{EVENTS}', 0, 0, fragments=tuple(
        channel(chain, [leaves[i] for i in indices], f == len(parts) - 1,
                f'{level.name}_fragment{f}_{EVENTS}')
        for f, indices in enumerate(parts)))

  return {chain.level.name: level_channel(chain) for chain in exchange.chains}


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
