"""Elastic multi-process runs (`run.elastic`): a lost process's learners
are left out, and the others train on.

With JAX's recoverability on (`distributed.initialize`), the survivors of
a process's death learn of it from `jax.experimental.multihost_utils.
live_devices`: a barrier over the live processes that raises
`ProcessFailureError` on every one of them when a process of the block
died. The train loop takes each round that ends with an averaging across
processes in three parts (`Elastic.run_round`):

1. its local steps, which need no other process;
2. a membership check (an empty `live_devices` block): a process that
   died during those steps, or before them, is found here, after
   `run.heartbeat_s`;
3. its averaging (from a copy of the state, so that an averaging that
   fails with a peer is taken again without it), in a second block.

A metrics row, which gathers every process's losses, is checked first
the same way (`Elastic.check`).

When a process is gone, the survivors lay the learners they hold out on
a mesh over their own devices (a grid of the live outermost groups;
every learner keeps its id, so its data, and its state) and take the
averaging again there: the dead process's learners are down from the
step after the last averaging they took part in, as the simulator's
outages (`faults.outages`, `core/membership.py`) have them, with uniform
weights. The simulator with those outages is this mode's oracle.

What is not survived in place (README, "When a host fails"): a process
that dies inside the averaging's collective after the check (XLA:CPU
cannot cancel a gloo collective: the watchdog ends the survivors with
exit code 4 and `--supervise` restarts them), process 0 (the coordination
service), and a death during an evaluation or a checkpoint. Not yet: a
lost process started again cannot rejoin (`refuse_rejoin` ends it), and
no checkpoint is written once a learner is lost (a checkpoint holds every
learner; the lost ones' state went with their process).
"""

import dataclasses
import logging as std_logging
import os
import sys
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from hier_avg import builder, errors
from hier_avg.core.schedule import Round
from hier_avg.core.topology import NODE, Topology
from hier_avg.data import streaming
from hier_avg.errors import UserError


def check(config) -> list[str]:
  """Why `config` cannot run elastic, as lines ([] when it can, or when
  `run.elastic` is off): the one place that says so."""
  if not config.run.elastic:
    return []
  hier, faults = config.hier, config.faults
  outer = (hier.outer_lr != 1 or hier.outer_momentum or
           hier.outer_lr_schedule != 'constant' or hier.outer_warmup)
  refused = (
      (hier.algorithm != 'hier', f'hier.algorithm={hier.algorithm!r} '
       "(use 'hier')"),
      (any(k != 'none' for k in hier.compress), 'hier.compress'),
      (any(hier.delay), 'hier.delay'),
      (any(f > 1 for f in hier.fragments), 'hier.fragments'),
      (hier.sync_warmup_steps > 0, 'hier.sync_warmup_steps'),
      (hier.period_schedule != 'constant',
       f'hier.period_schedule={hier.period_schedule!r}'),
      (bool(outer), 'an outer optimizer (hier.outer_*)'),
      (bool(faults.outages) or bool(faults.node_mtbf_steps) or
       hier.period_unit == 'time',
       'simulated failures (faults.*, hier.period_unit)'),
      (config.data.name in streaming.STREAMED_NAMES, f'data.name='
       f'{config.data.name!r} (a streamed data set)'))
  return [f'run.elastic=True is not supported with {why} yet; leave one '
          'of the two out.' for bad, why in refused if bad]


@dataclasses.dataclass(frozen=True)
class Change:
  """Learners left out of an elastic run from step `first` on."""
  first: int                    # The first step they did not take.
  processes: tuple[int, ...]    # The live processes after the change.
  learners: tuple[int, ...]     # The learners left out (ids).

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


class Elastic:
  """The live processes of an elastic run, and its engine over them.

  `config`, `feed`, `num_steps` and `steps_per_epoch` are the run's: the
  survivors' engine is built as the run's, with fewer learners.
  """

  def __init__(self, config, engine, feed, num_steps: int,
               steps_per_epoch: int, first_step: int):
    self.engine, self.feed = engine, feed
    self._config, self._num_steps = config, num_steps
    self._steps_per_epoch = steps_per_epoch
    minimum = tuple(config.hier.min_members)
    self._quorum = minimum[-1] if minimum else 1
    self._devices = list(jax.devices())
    self.changes: list[Change] = []
    # The last step of the last averaging across processes: every learner
    # that took part in it holds its work up to there.
    self._settled = first_step
    # Called at each change (the watchdog times the round over).
    self.on_change = lambda: None
    # Every process has started (and passed `refuse_rejoin`): from now
    # on, one that starts is a lost one started again.
    with multihost_utils.live_devices(self._devices):
      if jax.process_index() == 0:
        _client().key_value_set(RUNNING_KEY, '1', allow_overwrite=True)

  @property
  def live_learners(self) -> int:
    return self.engine.topology.num_learners

  def lost_steps(self, steps: int) -> int:
    """Learner-steps not taken in the first `steps` steps."""
    return sum(len(c.learners) * max(0, steps - c.first + 1)
               for c in self.changes)

  def run_round(self, state, round_: Round, inputs, pending: list, stop):
    """`round_` from `state` over the live processes: (the state, its
    outputs, whether to stop). A change of membership moves the outputs
    in `pending` (of the rounds not collected yet, `Progress.held`) onto
    the new mesh. The processes agree on `stop` (a `StopRequest`) only at
    averagings across them, where they check who is live."""
    streamed = self.feed.streamed
    if not _crosses(round_):
      return (*self.engine.run_round(state, round_, inputs, streamed), False)
    local = dataclasses.replace(round_, level=None, applies=())
    state, outputs = self.engine.run_round(state, local, inputs, streamed)
    moved = [outputs] + pending
    while True:
      # Who died before, or during, the steps.
      state = self.check(state, moved, round_.end)
      kept = jax.tree.map(lambda x: x.copy(), state)  # The input is donated.
      try:
        with multihost_utils.live_devices(self._devices):
          state, measures = self.engine.run_round(
              state, Round(round_.end, 0, round_.level, round_.applies),
              self.feed.round_inputs(round_.end, 0), streamed)
          jax.block_until_ready(state)
          stopping = stop.agreed(self.gather)
        break
      except multihost_utils.ProcessFailureError as e:
        # A peer died in or just after the averaging (which failed with
        # it, or took place): taken again without it.
        state = self._left_out(kept, e, round_.end, moved)
    self._settled = round_.end
    measures.pop('loss')
    return state, {**moved[0], **measures}, stopping

  def check(self, state, pending: list, step: int):
    """`state` (after `step`) on the live processes, checked by an empty
    `live_devices` block, before work across processes (an averaging,
    the gathers of a metrics row); `pending` as `run_round`'s."""
    while True:
      try:
        with multihost_utils.live_devices(self._devices):
          return state
      except multihost_utils.ProcessFailureError as e:
        state = self._left_out(state, e, step, pending)

  def gather(self, flag) -> np.ndarray:
    """Every live process's `flag`."""
    return _gather(flag, self._devices)

  def _left_out(self, state, error, step: int, moved: list):
    """The learners of `error`'s processes left out: the survivors'
    engine (now `self.engine`) and `state` on it; `moved`'s outputs, each
    `{name: array}`, moved too."""
    dead = {d.process_index for d in error.failed_devices}
    if 0 in dead:
      raise errors.PeerLost('process 0 (the coordination service) is gone')
    old = self.engine.topology
    self.on_change()
    self._devices = [d for d in self._devices if d.process_index not in dead]
    live = sorted({d.process_index for d in self._devices})
    lost = tuple(int(i) for i in old.learner_ids.reshape(-1)
                 if _process_of(old, int(i)) in dead)
    count = old.num_learners - len(lost)
    if count < self._quorum:
      raise errors.PeerLost(
          f'{count} learner(s) left, fewer than hier.min_members asks of '
          f'the outermost level ({self._quorum})')
    config = _with_learners(self._config, count)
    topology = _survivors(old, builder.build_topology(config, self._devices))
    self.engine, _ = builder.build_engine(config, self.feed.data, topology,
                                          self._num_steps,
                                          self._steps_per_epoch)
    self.feed.move_to(self.engine)
    for outputs in moved:
      outputs.update(move(outputs, old, topology))
    change = Change(self._settled + 1, tuple(live), lost)
    self.changes.append(change)
    logging.warning(
        'hier_avg: process(es) %s lost (noticed after step %d): their %d '
        'learner(s) are left out from step %d; %d learner(s) on processes '
        '%s train on.', sorted(dead), step,
        len(lost), change.first, count, live)
    return move(state, old, topology)


# Set in JAX's coordination service by process 0 once every process has
# started: a process that starts later (one lost, started again) finds it.
RUNNING_KEY = 'hier_avg/elastic/running'


def _client():
  # JAX's distributed client: `live_devices` uses it too; no public API
  # gives its key-value store yet.
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state.client


def refuse_rejoin() -> None:
  """Raises UserError in a process that an elastic run in progress has
  lost (started again, e.g. by `--supervise`): it cannot rejoin yet."""
  if jax.process_count() == 1:
    return
  try:
    _client().key_value_try_get(RUNNING_KEY)
  except jax.errors.JaxRuntimeError:  # NOT_FOUND: the run is starting.
    return
  raise UserError(
      f'process {jax.process_index()} started while this elastic run is in '
      'progress (its other processes train on without its learners); a '
      'process cannot rejoin a run in progress yet: let the run finish '
      '(README, "When a host fails").')


def _with_learners(config, count: int):
  """`config` with `count` learners: fewer groups of the outermost level."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.hier.num_learners = count
    if config.hier.levels:
      levels = [tuple(level) for level in config.hier.levels]
      levels[-1] = (count, levels[-1][1])
      config.hier.levels = tuple(levels)
  return config


def _crosses(round_: Round) -> bool:
  """Whether `round_` ends with an averaging across processes (over the
  outermost axis, which the processes split)."""
  return any(NODE in event.level.axes for event in round_.applies)


def _process_of(topology: Topology, learner: int) -> int:
  """The process that holds `learner` (by id)."""
  where = np.argwhere(topology.learner_ids == learner)[0]
  block = topology.block_shape
  device = topology.mesh.devices[tuple(w // b for w, b in zip(where, block))]
  return device.process_index


def _survivors(old: Topology, laid: Topology) -> Topology:
  """`laid` (a grid of the live learners' size on the live devices) with
  the ids of the learners each process held in `old`: each process keeps
  its own learners, in their order."""
  rows = {}  # Process -> the outermost rows of `old` it holds, in order.
  per_device = old.block_shape[0]
  for i in range(old.mesh_shape[0]):
    process = old.mesh.devices[(i,) + (0,) * (old.mesh.devices.ndim - 1)]
    rows.setdefault(process.process_index, []).extend(
        range(i * per_device, (i + 1) * per_device))
  order = []
  for i in range(laid.mesh_shape[0]):
    process = laid.mesh.devices[(i,) + (0,) * (laid.mesh.devices.ndim - 1)]
    taken = rows[process.process_index]
    order += taken[:laid.block_shape[0]]
    del taken[:laid.block_shape[0]]
  ids = old.learner_ids[np.asarray(order)]
  return dataclasses.replace(laid, ids=tuple(int(i) for i in ids.reshape(-1)))


def move(tree, old: Topology, new: Topology):
  """Arrays sharded like the learners of `old` (or replicated) as arrays
  of the same learners on `new`'s mesh; each process moves only the
  learners it holds in both, so nothing crosses processes."""
  names = old.axis_names

  def leaf(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(moved(x, jax.random.key_data),
                                      impl=jax.random.key_impl(x))
    return moved(x, lambda data: data)

  def moved(x, data_of):
    """`x`'s `data_of` its shards, on `new`."""
    spec = tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))
    if names[0] not in spec:  # Replicated (the step counter).
      local = np.asarray(data_of(x.addressable_data(0)))
      return jax.make_array_from_callback(
          local.shape, new.replicated_sharding(), lambda index: local[index])
    at, depth = spec.index(names[0]), len(names)
    rows = {}
    for shard in x.addressable_shards:
      ids = old.learner_ids[shard.index[at:at + depth]]
      data = np.moveaxis(np.asarray(data_of(shard.data)),
                         list(range(at, at + depth)), list(range(depth)))
      for where in np.ndindex(ids.shape):
        rows[int(ids[where])] = data[where]
    rest = next(iter(rows.values())).shape[x.ndim - depth:]  # Key data.
    shape = x.shape[:at] + new.grid_shape + x.shape[at + depth:] + rest

    def block(index):
      ids = new.learner_ids[index[at:at + depth]]
      data = np.stack([rows[int(i)] for i in ids.reshape(-1)])
      data = data.reshape(ids.shape + data.shape[1:])
      data = np.moveaxis(data, list(range(depth)), list(range(at, at + depth)))
      return data[index[:at] + (slice(None),) * depth + index[at + depth:]]

    return jax.make_array_from_callback(
        shape, NamedSharding(new.mesh, PartitionSpec(*spec)), block)

  return jax.tree.map(leaf, tree)


def _gather(flag, devices) -> np.ndarray:
  """Every process's `flag`, over one device of each in `devices`."""
  first = {}
  for d in devices:
    first.setdefault(d.process_index, d)
  mesh = Mesh(np.asarray(list(first.values())), ('process',))
  local = np.asarray(flag, np.int32).reshape(1)
  array = jax.make_array_from_process_local_data(
      NamedSharding(mesh, PartitionSpec('process')), local)
  gathered = jax.jit(lambda a: a, out_shardings=NamedSharding(
      mesh, PartitionSpec()))(array)
  return np.asarray(gathered.addressable_data(0))


def leave() -> None:
  """Ends an elastic process: after a barrier over the live processes,
  the others leave first and process 0 (the coordination service) last,
  so that none is aborted for losing it."""
  if jax.process_count() == 1:
    return
  with multihost_utils.live_devices(jax.devices()):
    pass
  logging.flush()
  std_logging.shutdown()
  sys.stdout.flush()
  sys.stderr.flush()
  if jax.process_index() != 0:
    os._exit(0)  # pylint: disable=protected-access
  time.sleep(1.0)
