"""Every level's averaging as an exchange: start, in flight, apply.

Every averaging event (`core/events.py`) of a level runs the level's chain
on the event's leaves (one fragment of the parameters):

  start (after step `event.start`, on the models then, the snapshot):
    anchor    a compressed level sends the change since its groups' last
              common model (the anchor), plus its residual;
    reduce    the group mean: a float32 all-reduce, or the compressed
              exchange between inner groups (`averaging.average_compressed`),
              or with simulated outages the mean over the members up
              (`core/presence.py`);
  in flight   what the start made (`InFlight`), kept in the state when a
              round ends before the event applies;
  apply (after step `event.apply`):
    outer     at the outermost level with an outer optimizer, its step on
              the mean (one state per fragment, which no other event
              changes in between);
    merge     the result replaces the leaves (on time), or each learner
              keeps its progress since the snapshot (late), or torchft's
              mix alpha;
    then the anchors of this level and those inside it restart from the
    result, its residual and outer state are installed, and with the
    level's last fragment its other parts average and its policy acts;
    with outages, the learners that did not average keep what they had.
"""

import dataclasses
import functools
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from hier_avg.core import averaging, compression, outer
from hier_avg.core import fragments as fragments_lib
from hier_avg.core.events import Event
from hier_avg.core.policies import AveragingPolicy
from hier_avg.core.presence import Presence
from hier_avg.core.schedule import Level, Schedule
from hier_avg.core.state import Shared, TrainState, is_shared, shared
from hier_avg.core.topology import Topology
from hier_avg.runtime import execution


@dataclasses.dataclass(frozen=True)
class EventBytes:
  """What one learner moves in one event of a level (bytes)."""
  inside: float   # Reducing inside its inner group first (compressed).
  between: float  # Its share of what crosses between the inner groups.
  payload: float  # One inner group's payload on the wire.


def event_bytes(groups, kind: str, inner: int) -> EventBytes:
  """The bytes of an event sending `groups` ((values, bytes per value) of
  each buffer, `averaging.value_groups`) at a level of compression `kind`
  whose inner groups have `inner` learners. Uncompressed, every learner's
  values in one all-reduce; compressed, the float32 reduction inside each
  inner group (none for one learner), then one payload per group
  (`averaging.average_compressed`), a learner's share 1 / inner. The
  engine's counters and the cost model both read this."""
  values = sum(n * size for n, size in groups)
  if kind == 'none':
    return EventBytes(0, values, values)
  # (The cost model's fragments may hold a fraction of a value.)
  payload = sum(compression.payload_bytes(round(n), kind)
                for n, _ in groups)
  return EventBytes(values if inner > 1 else 0, payload / inner, payload)


class InFlight(flax.struct.PyTreeNode):
  """An event started and not yet applied: leaves of its fragment,
  block-shaped like the parameters, or kept once where a group holds
  them alike (`Shared`)."""
  target: Shared        # The group's mean (the outer step comes at apply).
  snapshot: Any         # The learners' leaves at the start.
  measures: Any         # Drift (and spread), one value a learner.
  residual: Shared | None = None  # Error feedback's new residual, all
                                  # leaves, one per inner group.
  rest: Any = None      # The other parts' means, where averaged with it.
  present: Any = None   # With outages: who averaged (`Presence.average`).


@dataclasses.dataclass(frozen=True)
class LevelChain:
  """What one level's events do: compress or not, merge how."""
  level: Level
  inner_axes: tuple[str, ...]     # The groups one level in (() innermost).
  compress: str = 'none'
  error_feedback: bool = False
  delay_mix: float | None = None  # None: keep the progress when late.

  def merge(self, target, now, snapshot, late: bool):
    """The learners' leaves after an event applies (`target`: the group's
    new leaves, kept once)."""
    if not late:
      return target
    if self.delay_mix is None:
      return [t + (x - s) for t, x, s in zip(target, now, snapshot)]
    mix = self.delay_mix
    return [(1 - mix) * t + mix * x for t, x in zip(target, now)]


@dataclasses.dataclass(frozen=True)
class Measures:
  """What each event measures of the learners' models (`drift`: their
  squared distances from the group's mean; `spread`: at the outermost of
  several levels, their inner groups' means' from it), [block...] each."""
  topology: Topology
  levels: tuple[Level, ...]  # Innermost first.
  drift: bool = False
  spread: bool = False

  def names(self, level: Level) -> tuple[str, ...]:
    return ((('drift',) if self.drift else ()) +
            (('spread',) if self._spread_at(level) else ()))

  def _spread_at(self, level: Level) -> bool:
    return (self.spread and len(self.levels) > 1 and
            level.name == self.levels[-1].name)

  def of(self, now, mean, level: Level) -> dict:
    """The measures of `now` (a fragment's leaves) against the group's
    `mean` (kept once)."""
    nblock = len(self.topology.axis_names)
    found = {}
    if self.drift:
      found['drift'] = averaging.squared_distances(now, mean, nblock)
    if self._spread_at(level):
      group_means = averaging.average_block(
          now, self.levels[-2].axes, self.topology, again=True)
      found['spread'] = averaging.squared_distances(group_means, mean,
                                                    nblock)
    return found


@dataclasses.dataclass(frozen=True)
class Exchange:
  """Every level's chain on one topology, and what they keep."""
  schedule: Schedule
  chains: tuple[LevelChain, ...]  # Innermost first, as the levels.
  topology: Topology
  policy: AveragingPolicy
  outer_tx: optax.GradientTransformation | None
  measures: Measures
  presence: Presence | None = None  # With simulated outages.

  @property
  def nblock(self) -> int:
    return len(self.topology.axis_names)

  def chain(self, level: Level) -> LevelChain:
    return next(c for c in self.chains if c.level.name == level.name)

  def depth(self, level: Level) -> int:
    return [c.level.name for c in self.chains].index(level.name)

  @property
  def outermost(self) -> Level:
    return self.chains[-1].level

  @property
  def compressed(self) -> tuple[LevelChain, ...]:
    return tuple(c for c in self.chains if c.compress != 'none')

  def parts(self, params, level: Level) -> tuple[tuple[int, ...], ...]:
    """Leaf indices of each of `level`'s fragments (one learner's leaf
    sizes decide, `fragments.partition`)."""
    sizes = [math.prod(x.shape[self.nblock:]) * x.dtype.itemsize
             for x in jax.tree.leaves(params)]
    return fragments_lib.partition(sizes, level.fragments)

  def kept_once(self, tree, axes) -> Shared:
    """`tree`, equal along grid `axes`, kept once along them."""
    return shared(tree, axes, self.topology.axis_names)

  def leaves_of(self, tree, event: Event) -> list:
    """The event's leaves of `tree` (or of a `Shared` one's copy)."""
    tree = tree.value if is_shared(tree) else tree
    leaves = jax.tree.leaves(tree)
    return [leaves[i] for i in self.parts(tree, event.level)[event.fragment]]

  def with_leaves(self, tree, event: Event, new):
    """`tree` (or a `Shared` one) with the event's leaves replaced by
    `new`, each broadcast to the leaf's shape: a group's copy given to
    each learner, or to each group inside it that keeps one."""
    if is_shared(tree):
      return tree.replace(value=self.with_leaves(tree.value, event, new))
    leaves, treedef = jax.tree.flatten(tree)
    for i, leaf in zip(self.parts(tree, event.level)[event.fragment], new):
      leaves[i] = jnp.broadcast_to(leaf, leaves[i].shape)
    return jax.tree.unflatten(treedef, leaves)

  # ---- An event --------------------------------------------------------

  def start(self, state: TrainState, event: Event,
            before: TrainState | None = None) -> InFlight:
    """The event's collective on the models as they are now; its measures
    of the models in `before` (the state before the step's events: an
    inner level averaging at the same step does not hide the drift)."""
    chain = self.chain(event.level)
    now = self.leaves_of(state.params, event)
    axes = event.level.axes
    rest, residual, present = None, None, None
    if chain.compress != 'none':
      comm = state.comm
      feedback = comm['residual'].get(event.level.name)
      mean, residual = averaging.average_compressed(
          now, self.leaves_of(comm['anchor'][event.level.name], event),
          None if feedback is None else self.leaves_of(feedback, event),
          axes, chain.inner_axes, self.topology, chain.compress)
      if residual is not None:
        residual = Shared(residual, chain.inner_axes)
    elif self.presence is not None:
      (mean, rest), present = self.presence.average(state, (now, self.rest_of(
          state) if event.closes_period else {}), event.level)
    elif event.closes_period and not event.late:
      # The other parts with the parameters: one collective per dtype.
      mean, rest = averaging.average_block(
          (now, self.rest_of(state)), axes, self.topology, again=True)
    else:
      mean = averaging.average_block(now, axes, self.topology, again=True)
    measured = now if before is None else self.leaves_of(before.params,
                                                         event)
    target = self.kept_once(mean, axes)
    return InFlight(target, now, self.measures.of(measured, target.value,
                                                  event.level), residual,
                    rest, present)

  def outer_step(self, state: TrainState, event: Event, mean):
    """`mean` (the group's mean, kept once) through the outer optimizer
    where the event has one: (the group's new leaves, kept once; the
    fragment's new outer state or None)."""
    if self.outer_tx is None or event.level != self.outermost:
      return mean, None
    treedef = None
    if not self.outer_fragments:  # One state over the whole model's tree.
      treedef = jax.tree.structure(state.params)
      mean = jax.tree.unflatten(treedef, mean)
    target, outer_state = execution.map_block(
        functools.partial(outer.step, self.outer_tx), 'vmap', self.nblock,
        mean, self._outer_of(state, event))
    if treedef is not None:
      target = jax.tree.leaves(target)
    return target, outer_state

  def apply(self, state: TrainState, event: Event, record: InFlight):
    """The event's result merged into the learners' models; (state,
    measures)."""
    chain, before = self.chain(event.level), state
    now = self.leaves_of(state.params, event)
    # The outer step waits for the apply: its state is the fragment's own
    # and nothing else changes it in between, so a late event keeps only
    # the mean in flight.
    target, outer_state = self.outer_step(state, event, record.target.value)
    merged = chain.merge(target, now, record.snapshot, event.late)
    state = self.settle(state.replace(params=self.with_leaves(
        state.params, event, merged)), event, target, record.residual,
                        outer_state)
    if event.closes_period:
      rest = record.rest
      if rest is None:
        # An inner level's event of this step may have averaged them.
        rest = averaging.average_block(self.rest_of(state), event.level.axes,
                                       self.topology, again=True)
      state = self.policy.after_averaging(state.replace(**rest))
    if record.present is not None:
      state = self.presence.keep_absent(record.present, state, before,
                                        event.level)
    return state, record.measures

  def settle(self, state: TrainState, event: Event, target,
             residual=None, outer_state=None) -> TrainState:
    """What the levels keep after the event: its outer state, the anchors
    restarted from its result `target` (the group's leaves, kept once),
    its residual (installed at the apply, not the start: with a scan of
    the steps between, the state they carry must not wait for it)."""
    if outer_state is not None:
      state = self._install_outer(state, event, outer_state)
    return self._restart_anchors(state, event, target, residual)

  def rest_of(self, state: TrainState) -> dict:
    """The averaged parts other than the parameters."""
    return {p: getattr(state, p) for p in self.policy.averaged_parts
            if p != 'params'}

  # ---- What the levels keep ---------------------------------------------

  @property
  def outer_fragments(self) -> bool:
    """Whether the outer state is one per fragment of the outermost
    level (a tuple) rather than one over the whole model."""
    return any(c.level.fragments > 1 for c in self.chains)

  def _outer_of(self, state, event):
    kept = state.outer.value
    return kept[event.fragment] if self.outer_fragments else kept

  def _install_outer(self, state, event, outer_state):
    if self.outer_fragments:
      states = list(state.outer.value)
      states[event.fragment] = outer_state
      outer_state = tuple(states)
    return state.replace(outer=Shared(outer_state, self.outermost.axes))

  def _restart_anchors(self, state, event, common, residual):
    """Every compressed level at or inside the event's restarts its
    anchor on the event's leaves from `common`; the level's residual."""
    if not self.compressed:
      return state
    depth = self.depth(event.level)
    comm = dict(state.comm)
    comm['anchor'] = {
        c.level.name: (self.with_leaves(comm['anchor'][c.level.name], event,
                                         common)
                       if self.depth(c.level) <= depth
                       else comm['anchor'][c.level.name])
        for c in self.compressed}
    if residual is not None and event.level.name in comm['residual']:
      comm['residual'] = {**comm['residual'], event.level.name:
                          self.with_leaves(comm['residual'][
                              event.level.name], event, residual.value)}
    return state.replace(comm=comm)

  def keep(self, state: TrainState, event: Event,
           record: InFlight) -> TrainState:
    """A started event kept in the state across a round's end."""
    inflight = {**state.comm['inflight'], event.slot: record}
    return state.replace(comm={**state.comm, 'inflight': inflight})

  def kept(self, state: TrainState, event: Event) -> InFlight:
    return state.comm['inflight'][event.slot]

  def init(self, state: TrainState) -> TrainState:
    """The fresh state (every learner's model equal) with room for what
    the levels keep, each part once per group that holds it alike."""
    if self.presence is not None:
      state = self.presence.init(state)
    if self.outer_tx is not None:
      init = functools.partial(outer.init, self.outer_tx)
      top = self.outermost
      common = self.kept_once(state.params, top.axes).value
      if self.outer_fragments:
        leaves = jax.tree.leaves(common)
        kept = tuple(execution.map_block(init, 'vmap', self.nblock,
                                         [leaves[i] for i in indices])
                     for indices in self.parts(common, top))
      else:
        kept = execution.map_block(init, 'vmap', self.nblock, common)
      state = state.replace(outer=Shared(kept, top.axes))
    comm = {}
    if self.compressed:
      zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32),
                           state.params)
      comm['anchor'] = {c.level.name: self.kept_once(state.params,
                                                     c.level.axes)
                        for c in self.compressed}
      comm['residual'] = {c.level.name: self.kept_once(zeros, c.inner_axes)
                          for c in self.compressed if c.error_feedback}
    late = [c for c in self.chains if c.level.delay]
    if late:
      comm['inflight'] = {}
      for c in late:
        for f in range(c.level.fragments):
          event = Event(c.level, f, 0, c.level.delay)
          comm['inflight'][event.slot] = self._room(state, event)
    return state.replace(comm=comm) if comm else state

  def _room(self, state, event) -> InFlight:
    """Zeros shaped as what `start` makes for `event`."""
    now = self.leaves_of(state.params, event)
    chain, residual = self.chain(event.level), None
    if chain.compress != 'none' and chain.error_feedback:
      residual = self.kept_once([x.astype(jnp.float32) for x in now],
                                chain.inner_axes)
    return jax.tree.map(jnp.zeros_like, InFlight(
        self.kept_once(now, event.level.axes), now,
        {name: jnp.zeros(state.rng.shape, jnp.float32)
         for name in self.measures.names(event.level)}, residual))
