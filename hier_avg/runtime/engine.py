"""The sharded Hier-AVG round: local SGD on every learner, then averaging.

`Engine` owns the compiled functions. A round runs a number of local steps
on every learner (a device's block of learners packed as `packing` says)
and then the averaging of one level, or none, as one compiled call with the
state donated: the host dispatches once per round, not once per step.
Learners never talk to each other except in averaging.
"""

import collections
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec
import numpy as np
import optax

from hier_avg.core import averaging
from hier_avg.core import outer
from hier_avg.runtime import execution
from hier_avg.core import policies
from hier_avg.core.learner import Learner, step_key
from hier_avg.core.schedule import Level, Schedule
from hier_avg.core.state import TrainState, check_average, state_specs
from hier_avg.core.topology import Topology


def _flatten_block(tree, nblock):
  """[b1, b2, ..., x] leaves -> [b1*b2*..., x]: one axis of learners."""
  return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[nblock:]), tree)


def _unflatten_block(tree, block_shape):
  return jax.tree.map(lambda x: x.reshape(block_shape + x.shape[1:]), tree)


@dataclasses.dataclass(frozen=True)
class LevelCost:
  """One averaging event of a level.

  `bytes_per_learner` is the algorithm's payload, whatever the layout: the
  bytes of one learner's averaged state, or 0 when a group is one learner.
  `collectives` is what this layout issues per device: one all-reduce per
  dtype, or none when the whole group lives on one device.
  """
  collectives: int
  bytes_per_learner: int


class Engine:
  """Compiled state creation, train rounds and global averaging."""

  def __init__(self, learner: Learner, topology: Topology, schedule: Schedule,
               average: tuple[str, ...], round_loop: str = 'auto',
               max_unrolled_steps: int = 16, pack: str = 'auto',
               outer_tx: optax.GradientTransformation | None = None,
               reset_opt_state: bool = False):
    self.learner = learner
    self.topology = topology
    self.schedule = schedule
    self.average = check_average(average)
    platform = topology.mesh.devices.flat[0].platform
    self.round_loop = execution.resolve_round_loop(round_loop, platform)
    self.pack = execution.resolve_pack(pack, platform)
    self.max_unrolled_steps = max_unrolled_steps
    # Applied at the outermost averaging (see `outer.py`); None: plain
    # averaging.
    self.outer_tx = outer_tx
    # hier.opt_state='reset': zero the optimizer's moments at every averaging.
    self.reset_opt_state = reset_opt_state
    self._state_specs = state_specs(topology.learner_spec, PartitionSpec(),
                                    outer_tx is not None,
                                    self.keeps_stale_models)
    # Fixed output shardings keep every step's state exactly like the
    # initial one, so no step ever recompiles for a different layout.
    self._state_shardings = jax.tree.map(
        lambda spec: NamedSharding(topology.mesh, spec),
        self._state_specs)
    self._rounds = {}
    # Times each round was traced (== compiled); tests guard against retraces.
    self.trace_counts = collections.Counter()

  # ---- State ----------------------------------------------------------

  def init_state(self, seed: int, image_shape) -> TrainState:
    """All learners identical (one init key), each with its own data key."""
    grid = self.topology.grid_shape
    init_key, data_key = jax.random.split(jax.random.key(seed))

    def init():
      one = self.learner.init(init_key, image_shape)
      if self.outer_tx is not None:
        one += (outer.init(self.outer_tx, one[0]),)
      params, batch_stats, opt_state, *outer_state = jax.tree.map(
          lambda x: jnp.broadcast_to(x, grid + x.shape), one)
      ids = jnp.arange(self.topology.num_learners)
      rng = jax.vmap(jax.random.fold_in, (None, 0))(data_key, ids)
      return self._extend_state(TrainState(
          step=jnp.zeros((), jnp.int32), params=params,
          batch_stats=batch_stats, opt_state=opt_state,
          rng=rng.reshape(grid),
          outer=outer_state[0] if outer_state else None))

    return jax.jit(init, out_shardings=self._state_shardings)()

  # Whether the state holds past models (`TrainState.stale`).
  keeps_stale_models = False
  # What one communication event is called in the metrics' keys.
  event_noun = 'averagings'

  def _extend_state(self, state: TrainState) -> TrainState:
    """Hook for algorithms that keep more state (inside the init jit)."""
    return state

  def communication(self, state: TrainState) -> dict[str, LevelCost]:
    """What one averaging event of each level costs, by level name."""
    one_learner = self.one_learner(
        {p: getattr(state, p) for p in self.average})
    nbytes = averaging.bytes_per_learner(one_learner)
    grid = dict(zip(self.topology.axis_names, self.topology.grid_shape))
    costs = {}
    for level in self.schedule.levels:
      group = math.prod(grid[a] for a in level.axes)
      costs[level.name] = LevelCost(
          averaging.collectives_per_event(one_learner, level.axes,
                                          self.topology),
          nbytes if group > 1 else 0)
    return costs

  def one_learner(self, tree):
    """Shapes and dtypes of one learner's share of a learner-grid tree."""
    nblock = len(self.topology.grid_shape)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape[nblock:], x.dtype), tree)

  # ---- Data -----------------------------------------------------------

  def put_train_data(self, images, labels):
    """The whole training set, replicated on every device."""
    sharding = self.topology.replicated_sharding()
    return (jax.device_put(images, sharding), jax.device_put(labels, sharding))

  @property
  def _round_spec(self) -> PartitionSpec:
    """[steps, grid..., ...] arrays: steps unsharded, learners sharded."""
    return PartitionSpec(None, *self.topology.axis_names)

  def put_round_indices(self, sampler, first: int, length: int):
    """Example indices of steps `[first, first + length)`, like the learners.

    A [length, grid..., B] array sharded over the learner axes. Each process
    builds only the rows of its own devices' learners
    (`sampler.round_indices(first, length, learner_ids)`).
    """
    grid = self.topology.grid_shape
    ids = np.arange(math.prod(grid)).reshape(grid)

    def shard(index):
      block = ids[index[1:1 + len(grid)]]
      rows = sampler.round_indices(first, length, block.reshape(-1))
      return rows.reshape((length,) + block.shape + rows.shape[-1:])

    return jax.make_array_from_callback(
        (length,) + grid + (sampler.batch_size,),
        NamedSharding(self.topology.mesh, self._round_spec), shard)

  def process_learner_ids(self) -> np.ndarray:
    """Ids (row-major in the learner grid) of this process's learners."""
    return np.asarray(list(self._process_rows))

  @functools.cached_property
  def _process_rows(self) -> dict[int, int]:
    """This process's learner ids, in order -> their rows in its batches.

    Fixed by the topology, so computed once, not every streamed round.
    """
    grid = self.topology.grid_shape
    ids = np.arange(math.prod(grid)).reshape(grid)
    sharding = NamedSharding(self.topology.mesh, self.topology.learner_spec)
    mine = {int(i) for index in
            sharding.addressable_devices_indices_map(grid).values()
            for i in ids[index].reshape(-1)}
    return {i: row for row, i in enumerate(sorted(mine))}

  def put_round_batches(self, images_KxLxB, labels_KxLxB):
    """Streamed minibatches of a round, placed like the learners.

    Row l of the inputs belongs to `process_learner_ids()[l]`; returns
    [K, grid..., B, ...] arrays sharded over the learner axes, for
    `train_round(..., streamed=True)`.
    """
    grid = self.topology.grid_shape
    ids = np.arange(math.prod(grid)).reshape(grid)
    row_of = self._process_rows
    sharding = NamedSharding(self.topology.mesh, self._round_spec)

    def put(local):
      def shard(index):
        block = ids[index[1:1 + len(grid)]]
        rows = local[:, [row_of[int(i)] for i in block.reshape(-1)]]
        return rows.reshape(local.shape[:1] + block.shape + local.shape[2:])
      return jax.make_array_from_callback(
          local.shape[:1] + grid + local.shape[2:], sharding, shard)

    return put(images_KxLxB), put(labels_KxLxB)

  # ---- Rounds ---------------------------------------------------------

  def train_round(self, level: Level | None, length: int,
                  streamed: bool = False):
    """The compiled round `(state, *inputs) -> (state, loss)`.

    A round is `length` local steps on every learner (one program, so the
    host dispatches once per round, not once per step) followed by the
    averaging of `level`, or none. `inputs` are `(images, labels, indices)`
    for a resident data set (`put_train_data`, `put_round_indices`), or the
    round's `(images, labels)` minibatches when `streamed`
    (`put_round_batches`). `loss` is every learner's minibatch loss per
    step, [length, grid...], sharded: the mean over learners is left to the
    host, so rounds without averaging need no collective at all. Compiled
    once per (level, length, streamed).
    """
    key = (None if level is None else level.name, length)
    if streamed:
      key += ('streamed',)
    if key not in self._rounds:
      self._rounds[key] = self._build_round(level, key, streamed)
    return self._rounds[key]

  def _build_round(self, level: Level | None, key, streamed: bool):
    """One round as a sharded, jitted function of the whole learner grid."""

    def block_round(state, *inputs):
      self.trace_counts[key] += 1
      if streamed:
        batches = inputs
      else:
        # Gather the whole round's minibatches before the loop: indexing the
        # resident data set inside the scan made XLA:CPU copy it every step.
        images, labels, indices_K = inputs
        batches = (images[indices_K], labels[indices_K])
      if self.round_loop == 'scan':
        state, losses = lax.scan(self._block_step, state, batches)
      else:
        losses = []
        for k in range(batches[1].shape[0]):
          state, loss = self._block_step(
              state, jax.tree.map(lambda x: x[k], batches))
          losses.append(loss)
        losses = jnp.stack(losses)
      return self._after_round(state, level), losses

    data_specs = ((self._round_spec,) * 2 if streamed else
                  (PartitionSpec(), PartitionSpec(), self._round_spec))
    mapped = jax.shard_map(
        block_round, mesh=self.topology.mesh,
        in_specs=(self._state_specs,) + data_specs,
        out_specs=(self._state_specs, self._round_spec))
    return jax.jit(mapped, donate_argnums=0,
                   out_shardings=(self._state_shardings,
                                  NamedSharding(self.topology.mesh,
                                                self._round_spec)))

  def _block_step(self, state: TrainState, batch):
    """One SGD step of every learner in the block; no communication.

    Inside `shard_map`: `state` and `batch` hold the device's block of
    learners. Returns the new state and the learners' losses.
    """
    nblock = len(self.topology.grid_shape)
    block_shape = state.rng.shape
    flat = _flatten_block(
        (state.params, state.batch_stats, state.opt_state, state.rng, batch),
        nblock)

    def one(params, batch_stats, opt_state, rng, batch):
      return self.learner.step(params, batch_stats, opt_state,
                               step_key(rng, state.step), *batch)

    params, batch_stats, opt_state, loss = _unflatten_block(
        execution.map_learners(one, self.pack, *flat), block_shape)
    return state.replace(step=state.step + 1, params=params,
                         batch_stats=batch_stats, opt_state=opt_state), loss

  def _after_round(self, state: TrainState, level: Level | None):
    """The averaging of `level` (none for None), inside `shard_map`."""
    if level is None:
      return state
    parts = {p: getattr(state, p) for p in self.average}
    state = state.replace(**averaging.average_block(parts, level.axes,
                                                    self.topology))
    if self.reset_opt_state:
      state = state.replace(
          opt_state=policies.reset_optimizer_state(state.opt_state))
    if self.outer_tx is not None and level == self.schedule.levels[-1]:
      nblock = len(self.topology.grid_shape)
      params, outer_state = _unflatten_block(
          jax.vmap(functools.partial(outer.step, self.outer_tx))(
              *_flatten_block((state.params, state.outer), nblock)),
          state.rng.shape)
      state = state.replace(params=params, outer=outer_state)
    return state

  @functools.cached_property
  def global_average(self):
    """`state -> (params, batch_stats)` of the mean over all learners.

    A pure function of the state: no learner is changed.
    """
    topology = self.topology
    first = (0,) * len(topology.grid_shape)

    def block_mean(params, batch_stats):
      mean = averaging.average_block((params, batch_stats),
                                     topology.axis_names, topology)
      return jax.tree.map(lambda x: x[first], mean)

    # The mean is replicated by construction; on size-1 mesh axes no pmean
    # runs, so the varying-axes check cannot see that and is switched off.
    mapped = jax.shard_map(
        block_mean, mesh=topology.mesh,
        in_specs=(topology.learner_spec, topology.learner_spec),
        out_specs=PartitionSpec(), check_vma=False)
    return jax.jit(lambda s: mapped(s.params, s.batch_stats))

  @functools.cached_property
  def eval_sums(self):
    """Compiled `(params, batch_stats, images, labels, valid) -> sums`.

    `sums` = (correct predictions, summed cross-entropy) over the examples
    with `valid` set, replicated. The batch comes sharded over every device
    (`batch_sharding`) and only two scalars come back, so it works the same
    on one host or many.
    """
    axes = self.topology.axis_names

    def block_sums(params, batch_stats, images, labels, valid):
      logits = self.learner.logits(params, batch_stats, images)
      losses = optax.softmax_cross_entropy_with_integer_labels(
          logits.astype(jnp.float32), labels)
      correct = (logits.argmax(-1) == labels) & valid
      return (lax.psum(correct.sum(), axes),
              lax.psum(jnp.where(valid, losses, 0.0).sum(), axes))

    # Each device scores its own slice of the batch: no model op ever sees a
    # sharded batch, whatever the mesh's sharding mode.
    batch = PartitionSpec(axes)
    mapped = jax.shard_map(
        block_sums, mesh=self.topology.mesh,
        in_specs=(PartitionSpec(), PartitionSpec(), batch, batch, batch),
        out_specs=PartitionSpec())
    return jax.jit(mapped)

  @functools.cached_property
  def batch_statistics(self):
    """Compiled `(params, batch_stats, images_DxBxHxWxC) -> batch stats`.

    Device d computes the BatchNorm statistics of batch d (train-mode
    normalization, `Learner.batch_statistics`); the mean over the D batches
    comes back replicated. `images` is sharded like `batch_sharding`.
    """
    axes = self.topology.axis_names

    def block_stats(params, batch_stats, images_1xBxHxWxC):
      stats = self.learner.batch_statistics(params, batch_stats,
                                            images_1xBxHxWxC[0])
      return lax.pmean(stats, axes)

    mapped = jax.shard_map(
        block_stats, mesh=self.topology.mesh,
        in_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec(axes)),
        out_specs=PartitionSpec())
    return jax.jit(mapped)

  def event_counts(self, steps: int) -> dict[str, int]:
    """Communication events of each kind (by name) in the first `steps`."""
    return self.schedule.counts(steps)

  @property
  def batch_sharding(self) -> NamedSharding:
    """A batch split over every device of the mesh."""
    return NamedSharding(self.topology.mesh,
                         PartitionSpec(self.topology.axis_names))

  @property
  def max_round_length(self) -> int:
    """Most steps per compiled round; 0: no limit (a scanned round)."""
    if self.round_loop == 'scan':
      return 0
    # Unrolled learners multiply the program's size too.
    copies = self.topology.learners_per_device if self.pack == 'unroll' else 1
    return max(1, self.max_unrolled_steps // copies)

  @property
  def num_devices(self) -> int:
    return math.prod(self.topology.mesh_shape)
