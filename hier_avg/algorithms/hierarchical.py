"""Hier-AVG (and its special cases K-AVG and synchronous SGD) as an algorithm.

Every learner takes plain local optimizer steps; after a round the schedule's
level (if any) replaces each group's models by the group mean, the policy
decides what else is averaged or reset, and at the outermost level an
optional outer optimizer (SlowMo / DiLoCo, `core/outer.py`) steps on the
pseudo-gradient.

A level with a delay tau (`hier.delay`) averages late: its averaging after
step H averages the parameters of step H - tau (the snapshot; with an
outer optimizer at the outermost level, the outer step takes the
snapshot's mean), and each learner keeps the progress it made since,

    x_j <- mean_group(x_j,H-tau) + (x_j,H - x_j,H-tau),

or, with `hier.delay_mix` alpha (torchft's rule),
`x_j <- (1 - alpha) mean_group(x_j,H-tau) + alpha x_j,H`. Only the
parameters are late: the other averaged parts (BatchNorm statistics,
optimizer state, per the policy) average at H as without delay, and the
'reset' policy resets at H. The drift (and spread) is measured on the
snapshot. The pending averaging lives in `state.comm['delayed']` (one
parameter-sized tree per learner and delayed level), so a round cut inside
the window (and a checkpoint there) loses nothing.

A level with F > 1 fragments (`hier.fragments`, `core/fragments.py`)
averages each fragment of its parameters at the fragment's own step, one
collective per fragment and dtype; its other averaged parts and its policy
act at the end of its period, with the last fragment. An outer optimizer at
a fragmented outermost level keeps one state per fragment (anchor, momentum
and step count of the fragment's leaves), as torchft does. The drift of a
step with fragment events is that of the widest level averaging, over the
leaves it averages then.
"""

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from hier_avg.core import averaging, compression, hierarchy, outer
from hier_avg.core import fragments as fragments_lib
from hier_avg.core.learner import Learner, step_key
from hier_avg.core.periods import PeriodController
from hier_avg.core.policies import AveragingPolicy
from hier_avg.core.schedule import Level, Schedule
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
         fragments: Sequence[int] = ()) -> Algorithm:
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
    compress: per level, innermost first, 'none', 'bfloat16' or 'int8'
      (`core/compression.py`); empty: 'none' everywhere.
    error_feedback: per level, keep and resend what compression lost.
    delay: per level, the steps tau its averaging is late (below the
      narrowest period; 0: on time); empty: 0 everywhere. Not with
      compression on the same level.
    delay_mix: per level, alpha for torchft's rule instead of keeping the
      progress (0 where the delay is 0); empty: keep the progress.
    fragments: per level, the fragments F its parameters average in
      (`core/fragments.py`); empty: 1 everywhere. Not with compression or
      delay.
  """
  nblock = len(topology.grid_shape)
  schedule = schedule.with_delays(delay).with_fragments(fragments)
  levels = schedule.levels
  outermost = levels[-1] if levels else None
  # Compressed levels: name -> kind; each keeps its group's anchor (the
  # last common model of the group) in `state.comm`, and with error
  # feedback every learner's residual.
  compressed = {level.name: kind for level, kind in zip(
      levels, hierarchy.per_level(compress, len(levels), 'none'))
                if kind != 'none'}
  fed_back = tuple(level.name for level, on in zip(
      levels, hierarchy.per_level(error_feedback, len(levels), False))
                   if on)
  depth = {level.name: i for i, level in enumerate(levels)}
  # Delayed levels: name -> alpha of torchft's rule, or None (keep the
  # progress).
  mixes = hierarchy.per_level(delay_mix, len(levels), None)
  late = {level.name: mix for level, mix in zip(levels, mixes)
          if level.delay}
  for name in late:
    assert name not in compressed, f'{name}: delay with compression'
  fragmented = schedule.fragmented
  assert not (fragmented and (compressed or late)), (
      'fragments with compression or delay')
  # An outer optimizer at a fragmented schedule's outermost level keeps one
  # state per fragment of it (one, over every leaf, where it has one).
  outer_fragments = outermost.fragments if fragmented else 0

  def leaf_fragments(params, level: Level):
    """Leaf indices of each of `level`'s fragments of `params` (one
    learner's leaf sizes decide, `fragments.partition`)."""
    sizes = [math.prod(x.shape[nblock:]) * x.dtype.itemsize
             for x in jax.tree.leaves(params)]
    return fragments_lib.partition(sizes, level.fragments)

  def local_step(state: TrainState, batch):
    def one(params, batch_stats, opt_state, rng, batch):
      return learner.step(params, batch_stats, opt_state,
                          step_key(rng, state.step), *batch)

    params, batch_stats, opt_state, loss = execution.map_block(
        one, learner_loop, nblock, state.params, state.batch_stats,
        state.opt_state, state.rng, batch)
    return state.replace(step=state.step + 1, params=params,
                         batch_stats=batch_stats, opt_state=opt_state), loss

  def sync_step(state: TrainState, batch):
    """A step of the warmup's synchronous SGD: every learner's gradient
    averaged over all learners before its optimizer update, as DDP's
    all-reduce does, so the learners (equal before) leave it with equal
    models and optimizer states."""
    def gradients(params, batch_stats, rng, batch):
      return learner.loss_and_grads(params, batch_stats,
                                    step_key(rng, state.step), *batch)

    loss, batch_stats, grads = execution.map_block(
        gradients, learner_loop, nblock, state.params, state.batch_stats,
        state.rng, batch)
    grads = averaging.average_block(grads, outermost.axes, topology)
    params, opt_state = execution.map_block(
        learner.apply_gradients, learner_loop, nblock, state.params,
        state.opt_state, grads)
    return state.replace(step=state.step + 1, params=params,
                         batch_stats=batch_stats, opt_state=opt_state), loss

  def after_sync_step(state: TrainState):
    """The outermost level's averaging after a `sync_step`: the models
    and optimizer states are equal already (the policy's reset does not
    apply: synchronous SGD keeps its momentum); the other averaged parts
    average, the outer optimizer steps, compressed levels restart from the
    common model. The drift is zero."""
    rest = {p: getattr(state, p) for p in policy.averaged_parts
            if p not in ('params', 'opt_state')}
    state = state.replace(**averaging.average_block(rest, outermost.axes,
                                                    topology))
    if outer_tx is not None:
      state = step_outer(state)
    if compressed:
      state = _restart_anchors(state, outermost, state.params)
    zeros = jnp.zeros(state.rng.shape, jnp.float32)  # One a learner.
    return state, {name: zeros for name in measure_names(outermost)}

  def step_outer(state: TrainState) -> TrainState:
    """The outer optimizer's step on the whole model (per fragment, with
    one state per fragment)."""
    if not outer_fragments:
      params, outer_state = execution.map_block(
          functools.partial(outer.step, outer_tx), 'vmap', nblock,
          state.params, state.outer)
      return state.replace(params=params, outer=outer_state)
    leaves, treedef = jax.tree.flatten(state.params)
    outer_states = []
    for indices, outer_state in zip(leaf_fragments(state.params, outermost),
                                    state.outer):
      stepped, outer_state = execution.map_block(
          functools.partial(outer.step, outer_tx), 'vmap', nblock,
          [leaves[i] for i in indices], outer_state)
      outer_states.append(outer_state)
      for i, leaf in zip(indices, stepped):
        leaves[i] = leaf
    return state.replace(params=jax.tree.unflatten(treedef, leaves),
                         outer=tuple(outer_states))

  def measure_names(level: Level) -> tuple[str, ...]:
    """The measures an averaging of `level` reports."""
    return ((('drift',) if drift else ()) +
            (('spread',) if spread and level == outermost and len(levels) > 1
             else ()))

  def group_target(params, outer_state, level: Level):
    """The group's new model from `params` (a collective), the level's
    measures, and the outer optimizer's new state (None: untouched)."""
    mean = averaging.average_block(params, level.axes, topology)
    measures = {}
    _add_measures(measures, params, mean, level)
    if outer_tx is not None and level == outermost:
      mean, outer_state = execution.map_block(
          functools.partial(outer.step, outer_tx), 'vmap', nblock, mean,
          outer_state)
      return mean, measures, outer_state
    return mean, measures, None

  def snapshot(state: TrainState, level: Level):
    target, measures, outer_state = group_target(state.params, state.outer,
                                                 level)
    pending = {'measures': measures}
    if late[level.name] is None:
      pending['delta'] = jax.tree.map(lambda t, x: t - x, target,
                                      state.params)
    if late[level.name] is not None or _anchors_inside(level):
      pending['target'] = target
    if outer_state is not None:
      pending['outer'] = outer_state
    return pending

  def inner_axes(level: Level) -> tuple[str, ...]:
    """The axes of the groups one level in from `level`, which reduce in
    float32 before a compressed exchange (none for the innermost)."""
    return levels[depth[level.name] - 1].axes if depth[level.name] else ()

  def _anchors_inside(level: Level) -> bool:
    # Compressed levels inside `level` restart from its common model.
    return any(depth[name] < depth[level.name] for name in compressed)

  def keep(state: TrainState, level: Level, pending):
    pending = dict(pending)
    outer_state = pending.pop('outer', None)
    if outer_state is not None:
      state = state.replace(outer=outer_state)
    return state.replace(comm={**state.comm, 'delayed': {
        **state.comm['delayed'], level.name: pending}})

  def apply_late(state: TrainState, level: Level):
    """The pending averaging of `level` applied at the end of its window;
    the other averaged parts average now."""
    pending = state.comm['delayed'][level.name]
    rest = {p: getattr(state, p) for p in policy.averaged_parts
            if p != 'params'}
    means = averaging.average_block(rest, level.axes, topology)
    mix = late[level.name]
    if mix is None:
      params = jax.tree.map(lambda x, d: x + d, state.params,
                            pending['delta'])
    else:
      params = jax.tree.map(lambda t, x: (1 - mix) * t + mix * x,
                            pending['target'], state.params)
    state = policy.after_averaging(state.replace(params=params, **means))
    if _anchors_inside(level):
      state = _restart_anchors(state, level, pending['target'])
    return state, dict(pending['measures'])

  def _restart_anchors(state, level, common, residual=None, kind=None):
    """Every group of `level` and of the levels inside it now started
    from the common model `common`: their next changes count from it."""
    anchors = {name: common if depth[name] <= depth[level.name]
               else anchor for name, anchor in state.comm['anchor'].items()}
    residuals = dict(state.comm['residual'])
    if kind is not None and residual is not None:
      residuals[level.name] = residual
    return state.replace(comm={**state.comm, 'anchor': anchors,
                               'residual': residuals})

  def average_fragments(state: TrainState, events):
    """The parameter fragments of `events` ((level, fragment indices),
    innermost first) averaged, one collective per fragment and dtype;
    each later (wider) level's mean replaces an inner one's."""
    before, treedef = jax.tree.flatten(state.params)
    leaves = list(before)
    outer_states = state.outer
    measured = events[-1][0]
    measures = {}
    for level, due in events:
      parts = leaf_fragments(state.params, level)
      for f in due:
        # An inner level's means of this step, if any, averaged again.
        mean = averaging.average_block([leaves[i] for i in parts[f]],
                                       level.axes, topology,
                                       again=level != measured)
        if level == measured:
          _add_measures(measures, [before[i] for i in parts[f]], mean,
                        level)
        if outer_tx is not None and level == outermost:
          mean, state_f = execution.map_block(
              functools.partial(outer.step, outer_tx), 'vmap', nblock, mean,
              outer_states[f])
          outer_states = outer_states[:f] + (state_f,) + outer_states[f + 1:]
        for i, leaf in zip(parts[f], mean):
          leaves[i] = leaf
    return state.replace(params=jax.tree.unflatten(treedef, leaves),
                         outer=outer_states), measures

  def _add_measures(measures, params, mean, level: Level):
    """Adds the drift (and spread) of `params`, averaged to `mean` by
    `level`, to `measures`: sums over leaves, so over fragments too."""
    found = {}
    if drift:
      found['drift'] = averaging.squared_distances(params, mean, nblock)
    if spread and level == outermost and len(schedule.levels) > 1:
      group_means = averaging.average_block(
          params, schedule.levels[-2].axes, topology)
      found['spread'] = averaging.squared_distances(group_means, mean,
                                                    nblock)
    for name, value in found.items():
      measures[name] = measures[name] + value if name in measures else value

  def after_round(state: TrainState, level: Level | None,
                  delayed: bool = False, fragments=(),
                  synchronous: bool = False):
    if synchronous:
      return after_sync_step(state)
    if fragments:
      state, measures = average_fragments(state, fragments)
      if level is not None:  # The period's end: the other parts, the policy.
        rest = {p: getattr(state, p) for p in policy.averaged_parts
                if p != 'params'}
        state = policy.after_averaging(state.replace(
            **averaging.average_block(rest, level.axes, topology)))
      return state, measures
    if level is None:
      return state, {}
    if delayed:
      return apply_late(state, level)
    parts = {p: getattr(state, p) for p in policy.averaged_parts}
    kind, residual = compressed.get(level.name), None
    if kind is None:
      means = averaging.average_block(parts, level.axes, topology)
    else:
      rest = {p: v for p, v in parts.items() if p != 'params'}
      means = averaging.average_block(rest, level.axes, topology)
      means['params'], residual = averaging.average_compressed(
          state.params, state.comm['anchor'][level.name],
          state.comm['residual'].get(level.name), level.axes,
          inner_axes(level), topology, kind)
    measures = {}
    _add_measures(measures, state.params, means['params'], level)
    state = policy.after_averaging(state.replace(**means))
    if outer_tx is not None and level == outermost:
      state = step_outer(state)
    if compressed:
      # Every group of this level and of the levels inside it now holds a
      # common model.
      state = _restart_anchors(state, level, state.params, residual, kind)
    return state, measures

  def extend_state(state: TrainState) -> TrainState:
    if outer_tx is not None and outer_fragments:
      leaves = jax.tree.leaves(state.params)
      state = state.replace(outer=tuple(execution.map_block(
          functools.partial(outer.init, outer_tx), 'vmap', nblock,
          [leaves[i] for i in indices])
          for indices in leaf_fragments(state.params, outermost)))
    elif outer_tx is not None:
      state = state.replace(outer=execution.map_block(
          functools.partial(outer.init, outer_tx), 'vmap', nblock,
          state.params))
    comm = {}
    if compressed:
      zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32),
                           state.params)
      comm.update(anchor={name: state.params for name in compressed},
                  residual={name: zeros for name in fed_back})
    if late:
      # Room for each delayed level's pending averaging, as `keep`
      # leaves it (the outer state it installs at once).
      def room(level):
        scalars = jnp.zeros(state.rng.shape, jnp.float32)  # One a learner.
        pending = {'measures': {name: scalars
                                for name in measure_names(level)}}
        zeros = jax.tree.map(jnp.zeros_like, state.params)
        if late[level.name] is None:
          pending['delta'] = zeros
        if late[level.name] is not None or _anchors_inside(level):
          pending['target'] = zeros
        return pending
      comm['delayed'] = {level.name: room(level) for level in levels
                         if level.name in late}
    if comm:
      state = state.replace(comm=comm)
    return state

  def channels(state: TrainState) -> dict[str, communication.Channel]:
    one = communication.one_learner(
        {p: getattr(state, p) for p in policy.averaged_parts}, nblock)
    rest = {p: v for p, v in one.items() if p != 'params'}
    grid = dict(zip(topology.axis_names, topology.grid_shape))

    def channel(level):
      kind = compressed.get(level.name)
      size = lambda axes: math.prod(grid[a] for a in axes)
      alone = size(level.axes) == 1
      if level.fragments > 1:
        return fragment_channel(level, alone)
      if alone:
        return communication.Channel(f'{level.name}_{EVENTS}', 0, 0)
      if level.name in late:
        # The parameters at the snapshot, the rest at the window's end.
        nbytes = averaging.bytes_per_learner(one)
        collectives = sum(averaging.collectives_per_event(
            part, level.axes, topology) for part in (one['params'], rest))
        return _channel(level, collectives, nbytes)
      if kind is None:
        return _channel(level, averaging.collectives_per_event(
            one, level.axes, topology), averaging.bytes_per_learner(one))
      # Each inner group reduces in float32, then its one payload is
      # exchanged between the groups (`averaging.average_compressed`).
      inner = inner_axes(level)
      pre_reduced = (averaging.bytes_per_learner(one['params'])
                     if size(inner) > 1 else 0)
      payload = (averaging.compressed_bytes_per_learner(one['params'], kind)
                 / size(inner))
      collectives = (averaging.compressed_collectives_per_event(
          one['params'], level.axes, inner, topology, kind,
          level.name in fed_back) +
                     averaging.collectives_per_event(rest, level.axes,
                                                     topology))
      return _channel(level, collectives,
                      averaging.bytes_per_learner(rest) + payload,
                      inside=pre_reduced)

    def _channel(level, collectives, nbytes, inside=0):
      """A level's channel of `nbytes` per learner over its own links
      (between hosts where its groups span nodes) and `inside` bytes
      inside hosts."""
      between = nbytes if NODE in level.axes else 0
      return communication.Channel(
          f'{level.name}_{EVENTS}', collectives, inside + nbytes,
          between_hosts_bytes_per_learner=between)

    def fragment_channel(level, alone):
      """Each fragment's event; the last carries the other parts."""
      leaves = jax.tree.leaves(one['params'])
      parts = leaf_fragments(state.params, level)
      each = []
      for f, indices in enumerate(parts):
        # Each its own averaging: the fragment, and with the last the rest.
        sent = [[leaves[i] for i in indices]] + (
            [rest] if f == len(parts) - 1 else [])
        nbytes = 0 if alone else averaging.bytes_per_learner(sent)
        each.append(communication.Channel(
            f'{level.name}_fragment{f}_{EVENTS}',
            sum(averaging.collectives_per_event(part, level.axes, topology)
                for part in sent), nbytes,
            between_hosts_bytes_per_learner=(nbytes if NODE in level.axes
                                             else 0)))
      return communication.Channel(f'{level.name}_{EVENTS}', 0, 0,
                                   fragments=tuple(each))

    return {level.name: channel(level) for level in levels}

  extra = (('outer',) if outer_tx is not None else ()) + (
      ('comm',) if compressed or late else ())
  return Algorithm(
      description=schedule.describe(), schedule=schedule,
      local_step=local_step, sync_step=sync_step, after_round=after_round,
      channels=channels,
      event_counts=schedule.counts, extra_state=extra,
      extend_state=extend_state, snapshot=snapshot, keep=keep)


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
