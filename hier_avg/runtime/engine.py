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

from hier_avg.core.learner import Learner
from hier_avg.core.schedule import Level, Round, Schedule
from hier_avg.core.state import TrainState, state_specs
from hier_avg.core.topology import Topology
from hier_avg.runtime.communication import Channel, counters
from hier_avg.runtime.algorithm import Algorithm
from hier_avg.runtime.eval_kernels import EvalKernels
from hier_avg.runtime.execution import Execution


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
    shapes = jax.eval_shape(self._init(0, image_shape))

    def on_one_device(sharding, part) -> int:
      return sum(math.prod(sharding.shard_shape(leaf.shape)) *
                 leaf.dtype.itemsize for leaf in jax.tree.leaves(part))

    # The shardings are one per field of the state (a prefix of it).
    return sum(jax.tree.leaves(jax.tree.map(
        on_one_device, self._state_shardings, shapes)))

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
      return self.algorithm.extend_state(TrainState(
          step=jnp.zeros((), jnp.int32), params=params,
          batch_stats=batch_stats, opt_state=opt_state,
          rng=rng.reshape(grid)))

    return init

  def communication(self, state: TrainState) -> dict[str, Channel]:
    """What one event of each of the algorithm's channels costs."""
    return self.algorithm.channels(state)

  def counters(self, channels: dict[str, Channel],
               steps: int) -> dict[str, int]:
    """The communication counters of the first `steps` steps."""
    return counters(channels, self.algorithm.event_counts(steps))

  # ---- Rounds ---------------------------------------------------------

  def train_round(self, level: Level | None, length: int,
                  streamed: bool = False, snapshot: int | None = None,
                  delayed: Level | None = None, fragments=(),
                  synchronous: bool = False):
    """The compiled round `(state, *inputs) -> (state, outputs)`.

    A round is `length` local steps on every learner (one program, so the
    host dispatches once per round, not once per step) followed by the
    algorithm's `after_round(level)`. `inputs` are `(images, labels,
    indices)` for a data set resident on the devices
    (`topology.put_replicated`, `topology.put_round_indices`), or the
    round's `(images, labels)` minibatches when `streamed`
    (`topology.put_round_batches` for a streamed set,
    `topology.put_round_gathered` for one kept in host memory).
    `outputs['loss']` is every learner's minibatch loss per step, [length,
    grid...], sharded: the mean over learners is left to the host, so
    rounds without averaging need no collective at all. The algorithm's
    measures of the round's averaging (`outputs['drift']`, ...) come as
    [1, grid...] the same way. Compiled once per (level, length, streamed)
    and delayed-averaging window.

    `snapshot`, `delayed` (`Round`): after `snapshot` steps the round
    starts `delayed`'s late averaging of the models as they are then (its
    collective); the steps after it run on a state that does not hold its
    result, so nothing in them waits for it. A round that ends with
    `delayed`'s averaging applies it then; one cut before keeps it in the
    state (`Algorithm.keep`), and the round that ends with the averaging
    (`snapshot` None) applies it from there.

    `fragments` (`Round.fragments`): the parameter fragments each level
    averages after the round, with fragmented levels (`hier.fragments`).
    `synchronous` (`Round.synchronous`): the steps are the warmup's
    synchronous SGD (`Algorithm.sync_step`).
    """
    key = _program_key(level, length, streamed, snapshot, delayed,
                       fragments, synchronous)
    if key not in self._rounds:
      self._rounds[key] = self._build_round(level, streamed, snapshot,
                                            delayed, fragments, synchronous)
    return self._rounds[key]

  def round_program(self, round_: Round, streamed: bool = False):
    """`train_round` for `round_`."""
    return self.train_round(round_.level, round_.length, streamed,
                            round_.snapshot, round_.delayed, round_.fragments,
                            round_.synchronous)

  @property
  def compiled_rounds(self) -> tuple:
    """Keys (level name, length[, ('delay', level name, snapshot)][,
    ('fragments', (level name, fragments)...)][, 'streamed']) of the
    rounds built so far."""
    return tuple(self._rounds)

  @staticmethod
  def programs_of(rounds, streamed: bool = False) -> set:
    """The keys (as `compiled_rounds`) of the programs `rounds` run."""
    return {_program_key(r.level, r.length, streamed, r.snapshot, r.delayed,
                         r.fragments, r.synchronous) for r in rounds}

  def run_round(self, state: TrainState, round_: Round, inputs,
                streamed: bool = False):
    """Runs one round; returns `(state, outputs)` without waiting for them.

    XLA:CPU collectives across fake devices can deadlock when several
    rounds with a collective are in flight, so on CPU this waits for every
    round that ends in an averaging or takes a snapshot for a late one.
    The one place that knows it: the
    train loop, the tests and the benchmarks all run rounds through here.
    """
    state, outputs = self.round_program(round_, streamed)(state, *inputs)
    collective = (round_.level is not None or round_.snapshot is not None
                  or bool(round_.fragments))
    if collective and self.topology.platform == 'cpu':
      jax.block_until_ready(state)
    return state, outputs

  def _build_round(self, level: Level | None, streamed: bool,
                   snapshot: int | None = None, delayed: Level | None = None,
                   fragments=(), synchronous: bool = False):
    """One round as a sharded, jitted function of the whole learner grid."""
    algorithm, step_loop = self.algorithm, self.execution.step_loop
    if delayed is not None:
      assert algorithm.snapshot is not None, (
          f'{algorithm.description} cannot average late')
    if synchronous:
      assert algorithm.sync_step is not None, (
          f'{algorithm.description} has no synchronous warmup')

    def steps(state, batches):
      step = algorithm.sync_step if synchronous else algorithm.local_step
      if step_loop == 'scan':
        return lax.scan(step, state, batches)
      losses = []
      for k in range(batches[1].shape[0]):
        state, loss = step(
            state, jax.tree.map(lambda x, k=k: x[k], batches))
        losses.append(loss)
      return state, jnp.stack(losses)

    def block_round(state, *inputs):
      if streamed:
        batches = inputs
      else:
        # Gather the whole round's minibatches before the loop: indexing the
        # resident data set inside the scan made XLA:CPU copy it every step.
        images, labels, indices_K = inputs
        batches = (images[indices_K], labels[indices_K])
      if snapshot is None:
        state, losses = steps(state, batches)
      else:
        # The late averaging's collective sits between the two parts; the
        # second part runs on `state`, which does not hold its result, so
        # a scheduler may run the collective during those steps.
        losses = []
        if snapshot:
          state, first = steps(state, jax.tree.map(lambda x: x[:snapshot],
                                                   batches))
          losses.append(first)
        pending = algorithm.snapshot(state, delayed)
        state, rest = steps(state, jax.tree.map(lambda x: x[snapshot:],
                                                batches))
        losses = jnp.concatenate(losses + [rest])
        state = algorithm.keep(state, delayed, pending)
      if delayed is not None and level is not None:
        state, measures = algorithm.after_round(state, level, True)
      elif synchronous:
        state, measures = algorithm.after_round(state, level,
                                                synchronous=True)
      elif fragments:
        state, measures = algorithm.after_round(state, level,
                                                fragments=fragments)
      else:
        state, measures = algorithm.after_round(state, level)
      # Every output has a leading axis (steps, or the one averaging) so
      # that all shard like a round's inputs.
      return state, {'loss': losses,
                     **{name: value[None] for name, value in measures.items()}}

    round_spec = self.topology.round_spec
    data_specs = ((round_spec,) * 2 if streamed else
                  (PartitionSpec(), PartitionSpec(), round_spec))
    mapped = jax.shard_map(
        block_round, mesh=self.topology.mesh,
        in_specs=(self._state_specs,) + data_specs,
        out_specs=(self._state_specs, round_spec))
    return jax.jit(mapped, donate_argnums=0,
                   out_shardings=(self._state_shardings,
                                  self.topology.round_sharding()))


def _program_key(level: Level | None, length: int, streamed: bool,
                 snapshot: int | None, delayed: Level | None,
                 fragments, synchronous: bool = False) -> tuple:
  """What tells one compiled round program from another."""
  key = (None if level is None else level.name, length)
  if delayed is not None:
    key += (('delay', delayed.name, snapshot),)
  if fragments:
    key += (('fragments',) + tuple((l.name, due) for l, due in fragments),)
  if synchronous:
    key += ('synchronous',)
  if streamed:
    key += ('streamed',)
  return key
