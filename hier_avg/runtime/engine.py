"""The runtime: sharded state and compiled rounds of any algorithm.

An `Engine` puts a learner and an algorithm (`runtime/algorithm.py`) on a
topology. A round runs a number of local steps on every learner and then
what the algorithm does after a round (an averaging of one level, or
nothing), as one compiled call with the state donated: the host dispatches
once per round, not once per step. The engine owns only that; where data
goes is the topology's (`put_round_indices`, ...), the kernels that look at
the averaged model are `eval_kernels`, and the communication counters are
`communication`.
"""

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from hier_avg.core import membership as membership_lib
from hier_avg.core.learner import Learner
from hier_avg.core.events import Event
from hier_avg.core.schedule import Level, Round, Schedule
from hier_avg.core.state import TrainState, state_specs
from hier_avg.core.topology import Topology
from hier_avg.runtime.communication import Channel, counters
from hier_avg.runtime.algorithm import Algorithm
from hier_avg.runtime.eval_kernels import EvalKernels
from hier_avg.runtime.execution import Execution
from hier_avg.runtime.shared_layout import SharedLayout


class Engine:
  """State creation and compiled rounds of `algorithm` on `topology`."""

  def __init__(self, learner: Learner, topology: Topology,
               algorithm: Algorithm, execution: Execution = Execution()):
    self.learner = learner
    self.topology = topology
    self.algorithm = algorithm
    self.execution = execution
    self.kernels = EvalKernels(learner, topology)
    self._state_specs = state_specs(topology.learner_spec, PartitionSpec(),
                                    algorithm.extra_state)
    # Fixed output shardings keep every step's state exactly like the
    # initial one, so no step ever recompiles for a different layout.
    self._state_shardings = jax.tree.map(
        lambda spec: NamedSharding(topology.mesh, spec), self._state_specs)
    self._rounds = {}
    self._layout = SharedLayout(topology)
    self._tally = None  # What simulated outages cost, counted once.

  @property
  def schedule(self) -> Schedule:
    return self.algorithm.schedule

  @property
  def max_round_length(self) -> int:
    """Most steps per compiled round; 0: no limit."""
    return self.execution.max_round_length(self.topology.learners_per_device)

  def init_state(self, seed: int, image_shape) -> TrainState:
    """All learners identical (one init key), each with its own data key."""
    return jax.jit(self._init(seed, image_shape),
                   out_shardings=self._state_shardings)()

  def state_bytes_per_device(self, image_shape) -> int:
    """What the state of every learner takes on one device, found without
    allocating it (shapes only)."""
    return sum(self.state_bytes_by_part(image_shape).values())

  def state_bytes_by_part(self, image_shape) -> dict[str, int]:
    """`state_bytes_per_device` per field of the state (and per entry of
    `comm`: 'comm/anchor', ...)."""
    shapes = jax.eval_shape(self._init(0, image_shape))
    found = {}
    for name, sharding in vars(self._state_shardings).items():
      part = getattr(shapes, name)
      if part is None:
        continue
      # The shardings are one per field of the state (a prefix of it).
      pieces = (part.items() if name == 'comm' else [(None, part)])
      for key, piece in pieces:
        found[name if key is None else f'{name}/{key}'] = sum(
            math.prod(sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
            for leaf in jax.tree.leaves(piece))
    return found

  def _init(self, seed: int, image_shape):
    """The function that makes the initial state."""
    grid = self.topology.grid_shape
    init_key, data_key = jax.random.split(jax.random.key(seed))

    def init():
      params, batch_stats, opt_state = jax.tree.map(
          lambda x: jnp.broadcast_to(x, grid + x.shape),
          self.learner.init(init_key, image_shape))
      ids = jnp.arange(self.topology.num_learners)
      rng = jax.vmap(jax.random.fold_in, (None, 0))(data_key, ids)
      return self._layout.one_per_device(self.algorithm.extend_state(TrainState(
          step=jnp.zeros((), jnp.int32), params=params,
          batch_stats=batch_stats, opt_state=opt_state,
          rng=rng.reshape(grid))))

    return init

  def portable(self, state: TrainState) -> TrainState:
    """`state` as checkpoints hold it (`SharedLayout.portable`)."""
    return self._layout.portable(state)

  def from_portable(self, state: TrainState) -> TrainState:
    """A `portable` state (restored on this engine's mesh) stored as the
    rounds take it."""
    return self._layout.from_portable(state)

  def communication(self, state: TrainState) -> dict[str, Channel]:
    """What one event of each of the algorithm's channels costs."""
    return self.algorithm.channels(state)

  def counters(self, channels: dict[str, Channel],
               steps: int) -> dict[str, int]:
    """The communication counters of the first `steps` steps (and what
    simulated outages cost, `membership.Tally`)."""
    found = counters(channels, self.algorithm.event_counts(steps))
    membership = self.algorithm.membership
    if membership is not None:
      if self._tally is None:
        self._tally = membership_lib.Tally(membership, self.schedule,
                                           self.level_group_sizes)
      found.update(self._tally.at(steps))
    return found

  @property
  def level_group_sizes(self) -> tuple[int, ...]:
    """Learners in each group of each level, innermost first."""
    grid = dict(zip(self.topology.axis_names, self.topology.grid_shape))
    return tuple(math.prod(grid[a] for a in level.axes)
                 for level in self.schedule.levels)

  # ---- Rounds ---------------------------------------------------------

  def train_round(self, level: Level | None, length: int,
                  streamed: bool = False):
    """The compiled round of `length` local steps that ends with `level`'s
    whole-model averaging (None: none): `round_program` of that round."""
    applies = () if level is None else (Event(level, 0, length, length),)
    return self.round_program(Round(0, length, level, applies), streamed)

  def round_program(self, round_: Round, streamed: bool = False):
    """The compiled program `(state, *inputs) -> (state, outputs)` of a
    round like `round_` (`Round`: its steps, the events it starts and
    applies).

    A round is its local steps on every learner (one program, so the host
    dispatches once per round, not once per step), the events it starts
    between them (each on the models as they are then: the steps after do
    not depend on it, so its collective may run during them) and the
    events it applies after them. `inputs` are `(images, labels, indices)`
    for a data set resident on the devices (`topology.put_replicated`,
    `topology.put_round_indices`), or the round's `(images, labels)`
    minibatches when `streamed` (`topology.put_round_batches` for a
    streamed set, `topology.put_round_gathered` for one kept in host
    memory). `outputs['loss']` is every learner's minibatch loss per step,
    [length, grid...], sharded: the mean over learners is left to the
    host, so rounds without averaging need no collective at all. The
    measures of the round's widest averaging (`outputs['drift']`, ...)
    come as [1, grid...] the same way. Compiled once per `_program_key`.
    """
    key = _program_key(round_, streamed)
    if key not in self._rounds:
      self._rounds[key] = self._build_round(round_, streamed)
    return self._rounds[key]

  @property
  def compiled_rounds(self) -> tuple:
    """Keys (`_program_key`) of the rounds built so far."""
    return tuple(self._rounds)

  @staticmethod
  def programs_of(rounds, streamed: bool = False) -> set:
    """The keys (as `compiled_rounds`) of the programs `rounds` run."""
    return {_program_key(r, streamed) for r in rounds}

  def run_round(self, state: TrainState, round_: Round, inputs,
                streamed: bool = False):
    """Runs one round; returns `(state, outputs)` without waiting for them.

    XLA:CPU collectives across fake devices can deadlock when several
    rounds with a collective are in flight, so on CPU this waits for every
    round that has one. The one place that knows it: the train loop, the
    tests and the benchmarks all run rounds through here.
    """
    state, outputs = self.round_program(round_, streamed)(
        state, *inputs, *self._membership_inputs(round_))
    collective = bool(round_.level or round_.applies or round_.starts)
    if collective and self.topology.platform == 'cpu':
      jax.block_until_ready(state)
    return state, outputs

  def _membership_inputs(self, round_: Round) -> tuple:
    """Who is up at each of the round's steps, as the round program takes
    it (`core/membership.py`): () without simulated outages."""
    membership = self.algorithm.membership
    if membership is None:
      return ()
    arrays = membership_lib.round_arrays(membership, round_.first,
                                         round_.length)
    grid = (round_.length,) + self.topology.grid_shape
    per_learner = [jax.make_array_from_callback(
        grid, self.topology.round_sharding(),
        lambda index, a=a: a.reshape(grid)[index]) for a in arrays[:-1]]
    return (*per_learner, jax.device_put(
        arrays[-1], self.topology.replicated_sharding()))

  def _build_round(self, round_: Round, streamed: bool):
    """One round as a sharded, jitted function of the whole learner grid."""
    algorithm, step_loop = self.algorithm, self.execution.step_loop
    if round_.synchronous:
      assert algorithm.sync_step is not None, (
          f'{algorithm.description} has no synchronous warmup')

    def steps(state, batches):
      step = (algorithm.sync_step if round_.synchronous
              else algorithm.local_step)
      if step_loop == 'scan':
        return lax.scan(step, state, batches)
      losses = []
      for k in range(batches[1].shape[0]):
        state, loss = step(state, jax.tree.map(lambda x, k=k: x[k], batches))
        losses.append(loss)
      return state, jnp.stack(losses)

    members = () if algorithm.membership is None else (
        (self.topology.round_spec,) * 3 + (PartitionSpec(),))

    def block_round(state, *inputs):
      inputs, membership = inputs[:len(inputs) - len(members)], inputs[
          len(inputs) - len(members):]
      if streamed:
        batches = inputs
      else:
        # Gather the whole round's minibatches before the loop: indexing the
        # resident data set inside the scan made XLA:CPU copy it every step.
        images, labels, indices_K = inputs
        batches = (images[indices_K], labels[indices_K])
      batches = tuple(batches) + tuple(membership)
      state, losses, started = _steps_and_starts(
          algorithm, round_, state, batches, steps)
      state, measures = _applies(algorithm, round_, state, started)
      # Every output has a leading axis (steps, or the one averaging) so
      # that all shard like a round's inputs.
      return state, {'loss': losses,
                     **{name: value[None] for name, value in measures.items()}}

    round_spec = self.topology.round_spec
    data_specs = ((round_spec,) * 2 if streamed else
                  (PartitionSpec(), PartitionSpec(), round_spec))
    mapped = jax.shard_map(
        block_round, mesh=self.topology.mesh,
        in_specs=(self._state_specs,) + data_specs + members,
        out_specs=(self._state_specs, round_spec))
    return jax.jit(mapped, donate_argnums=0,
                   out_shardings=(self._state_shardings,
                                  self.topology.round_sharding()))


def _steps_and_starts(algorithm: Algorithm, round_: Round, state, batches,
                      steps):
  """The round's steps, with its events started between them: (state,
  losses, {slot: (event, record)})."""
  started, losses, done = {}, [], 0
  for at, events in round_.starts:
    if at > done:
      state, part = steps(state, jax.tree.map(lambda x: x[done:at], batches))
      losses.append(part)
      done = at
    for event in events:
      started[event.slot] = (event, algorithm.start(state, event))
  if done < round_.length:
    state, part = steps(state, jax.tree.map(lambda x: x[done:], batches))
    losses.append(part)
  if not losses:  # A round of no steps: its averaging alone.
    losses.append(jnp.zeros((0,) + state.rng.shape, jnp.float32))
  return state, jnp.concatenate(losses), started


def _applies(algorithm: Algorithm, round_: Round, state, started):
  """The round's events applied, innermost first; those started and not
  applied kept in the state. (state, measures of the widest level)."""
  measures, before = {}, state
  if round_.synchronous:
    state, measures = algorithm.after_sync(state)
  for event in round_.applies:
    if event.late:
      record = (started.pop(event.slot)[1] if event.slot in started
                else algorithm.kept(state, event))
    else:
      record = algorithm.start(state, event, before)
    state, found = algorithm.apply(state, event, record)
    if event.level == round_.applies[-1].level:
      measures = {name: measures[name] + value if name in measures else
                  value for name, value in found.items()}
  for event, record in started.values():
    state = algorithm.keep(state, event, record)
  return state, measures


def _program_key(round_: Round, streamed: bool) -> tuple:
  """What tells one compiled round program from another: (level name,
  length[, its events where they are not the level's whole-model
  averaging][, 'synchronous'][, 'streamed'])."""
  key = (None if round_.level is None else round_.level.name, round_.length)
  plain = (() if round_.level is None else
           (Event(round_.level, 0, round_.end, round_.end),))
  if round_.starts or tuple((e.level, e.fragment, e.late)
                            for e in round_.applies) != tuple(
                                (e.level, e.fragment, e.late) for e in plain):
    key += (('events', tuple((e.slot, e.late) for e in round_.applies),
             tuple((at, tuple(e.slot for e in events))
                   for at, events in round_.starts)),)
  if round_.synchronous:
    key += ('synchronous',)
  if streamed:
    key += ('streamed',)
  return key
