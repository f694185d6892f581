"""The learner grid and the device mesh it is laid out on.

Learners form a grid, one axis per level of the hierarchy: Hier-AVG's grid is
`(P/S, S)` with axes `('node', 'local')`. The device mesh has the same axis
names; each of its sizes divides the grid's, and every device holds a *block*
of `grid // mesh` learners. So 16 learners run on 8 devices, on 1 GPU or on
1 CPU with the same code: one learner per device is the block size 1 case.

With several processes (hosts) the mesh spans all of their devices, the
outermost axis across hosts and the inner ones inside a host, so averaging
over the inner axes ('local') never leaves a host.
"""

import dataclasses
import functools
import itertools
import math
from typing import Sequence

import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
import numpy as np

from hier_avg.errors import UserError, require

NODE, LOCAL = 'node', 'local'


@dataclasses.dataclass(frozen=True)
class Topology:
  """Where every learner lives: grid axes, device mesh and per-device blocks."""
  axis_names: tuple[str, ...]
  grid_shape: tuple[int, ...]
  mesh: Mesh
  # The learners' ids in grid order (they choose each learner's data);
  # None: 0 .. P - 1. An elastic run's survivors hold some of a larger
  # grid's learners (`run/elastic.py`).
  ids: tuple[int, ...] | None = None

  @property
  def mesh_shape(self) -> tuple[int, ...]:
    return tuple(self.mesh.shape[a] for a in self.axis_names)

  @property
  def block_shape(self) -> tuple[int, ...]:
    """Learners per device along each grid axis."""
    return tuple(g // m for g, m in zip(self.grid_shape, self.mesh_shape))

  @property
  def num_learners(self) -> int:
    return math.prod(self.grid_shape)

  @property
  def learners_per_device(self) -> int:
    return math.prod(self.block_shape)

  @property
  def learner_spec(self) -> PartitionSpec:
    """Leading learner axes sharded over the mesh axes of the same name."""
    return PartitionSpec(*self.axis_names)

  def learner_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, self.learner_spec)

  def replicated_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def num_devices(self) -> int:
    return math.prod(self.mesh_shape)

  @property
  def platform(self) -> str:
    return self.mesh.devices.flat[0].platform

  @property
  def batch_sharding(self) -> NamedSharding:
    """A batch split over every device of the mesh (evaluation)."""
    return NamedSharding(self.mesh, PartitionSpec(self.axis_names))

  # ---- Learner ids and where their data goes ----------------------------

  @functools.cached_property
  def learner_ids(self) -> np.ndarray:
    """Every learner's id, laid out as the grid (row-major ids)."""
    ids = np.arange(self.num_learners) if self.ids is None else np.asarray(
        self.ids)
    return ids.reshape(self.grid_shape)

  @functools.cached_property
  def _process_rows(self) -> dict[int, int]:
    """This process's learner ids, in order -> their rows in its batches."""
    mine = {int(i) for index in self.learner_sharding()
            .addressable_devices_indices_map(self.grid_shape).values()
            for i in self.learner_ids[index].reshape(-1)}
    return {i: row for row, i in enumerate(sorted(mine))}

  def process_learner_ids(self) -> np.ndarray:
    """Ids of the learners whose devices this process drives, in order."""
    return np.asarray(list(self._process_rows))

  @property
  def round_spec(self) -> PartitionSpec:
    """[steps, grid..., ...] arrays: steps unsharded, learners sharded."""
    return PartitionSpec(None, *self.axis_names)

  def round_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, self.round_spec)

  def _device_learners(self, index) -> np.ndarray:
    """The learner ids of one device's block, from a round array's index."""
    return self.learner_ids[index[1:1 + len(self.grid_shape)]]

  def put_replicated(self, *arrays):
    """Arrays (a resident data set) replicated on every device."""
    return tuple(jax.device_put(a, self.replicated_sharding()) for a in arrays)

  def _block_indices(self, sampler, first: int, length: int, index):
    """[length, block..., B]: the indices of one device's learners."""
    block = self._device_learners(index)
    rows = sampler.round_indices(first, length, block.reshape(-1))
    return rows.reshape((length,) + block.shape + rows.shape[-1:])

  def put_round_indices(self, sampler, first: int, length: int):
    """Example indices of steps `[first, first + length)`, like the learners.

    A [length, grid..., B] array sharded over the learner axes. Each process
    builds only the rows of its own devices' learners
    (`sampler.round_indices(first, length, learner_ids)`).
    """
    return jax.make_array_from_callback(
        (length,) + self.grid_shape + (sampler.batch_size,),
        self.round_sharding(),
        lambda index: self._block_indices(sampler, first, length, index))

  def put_round_gathered(self, sampler, first: int, length: int,
                         *arrays_NxD):
    """The minibatches of steps `[first, first + length)`, gathered on host.

    For a data set held in host memory (`data.placement='host'`), the
    `arrays_NxD[put_round_indices(...)]` that a device-resident round
    gathers on device: [length, grid..., B, ...] arrays sharded over the
    learner axes. The gather is here, where indices are placed, because
    only the topology knows which learners each device holds: each process
    gathers only its own devices' rows, from the same indices.
    """
    def put(array_NxD):
      def shard(index):
        return array_NxD[self._block_indices(sampler, first, length, index)]
      return jax.make_array_from_callback(
          (length,) + self.grid_shape + (sampler.batch_size,)
          + array_NxD.shape[1:], self.round_sharding(), shard)

    return tuple(put(a) for a in arrays_NxD)

  def put_round_batches(self, *arrays_KxLxB):
    """A process's streamed minibatches of a round, placed like the learners.

    Row l of each [K, L, B, ...] input belongs to `process_learner_ids()[l]`;
    returns [K, grid..., B, ...] arrays sharded over the learner axes.
    """
    row_of = self._process_rows

    def put(local):
      def shard(index):
        block = self._device_learners(index)
        rows = local[:, [row_of[int(i)] for i in block.reshape(-1)]]
        return rows.reshape(local.shape[:1] + block.shape + local.shape[2:])
      return jax.make_array_from_callback(
          local.shape[:1] + self.grid_shape + local.shape[2:],
          self.round_sharding(), shard)

    return tuple(put(a) for a in arrays_KxLxB)

  def describe(self) -> str:
    return (f'learner grid {dict(zip(self.axis_names, self.grid_shape))} on '
            f'mesh {dict(zip(self.axis_names, self.mesh_shape))} '
            f'({self.learners_per_device} learner(s) per device)')


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def _fit_mesh_shape(grid_shape, requested, num_devices, num_processes=1):
  """The largest mesh that divides the grid and fits, honouring requests.

  `requested[i] == -1` lets axis i take any divisor of its grid size. Among
  meshes with the most devices, inner axes (the fast, intra-node ones) are
  preferred large. With several processes the mesh must use every device
  (each process drives its own) with the outer axis split evenly over them.
  """
  choices = [_divisors(g) if r == -1 else [r]
             for g, r in zip(grid_shape, requested)]
  best = None
  for shape in itertools.product(*choices):
    size = math.prod(shape)
    if size > num_devices:
      continue
    if num_processes > 1 and (size != num_devices or
                              shape[0] % num_processes):
      continue
    key = (size, tuple(reversed(shape)))
    if best is None or key > best[0]:
      best = (key, shape)
  return best[1] if best else None


def make_topology(grid_shape: Sequence[int],
                  axis_names: Sequence[str],
                  mesh_shape: Sequence[int],
                  devices: Sequence[jax.Device] | None = None) -> Topology:
  """Lays a learner grid onto a device mesh (-1 entries: as many as fit)."""
  grid_shape, axis_names = tuple(grid_shape), tuple(axis_names)
  mesh_shape = tuple(mesh_shape)
  devices = list(jax.devices() if devices is None else devices)
  for name, g, m in zip(axis_names, grid_shape, mesh_shape):
    require(m == -1 or g % m == 0,
            f'mesh.{name}_devices={m} does not divide the {g} learner(s) along '
            f"'{name}'; use a divisor of {g} or -1.")
  fixed = math.prod(m for m in mesh_shape if m != -1)
  require(fixed <= len(devices),
          f'the mesh asks for {fixed} devices but only {len(devices)} exist; '
          'lower mesh.node_devices/mesh.local_devices or use -1.')
  num_processes = len({d.process_index for d in devices})
  shape = _fit_mesh_shape(grid_shape, mesh_shape, len(devices), num_processes)
  if num_processes == 1:
    assert shape is not None  # All-ones always fits once `fixed` does.
    mesh = jax.make_mesh(shape, axis_names,
                         devices=devices[:math.prod(shape)])
  else:
    require(shape is not None,
            f'{num_processes} processes with {len(devices)} devices in all '
            f'cannot hold the learner grid {grid_shape}: the mesh must use '
            f'every device, with {num_processes} dividing its '
            f"'{axis_names[0]}' size; choose hier.num_learners/group_size "
            'to fit, or set mesh.* to -1.')
    per_process = (shape[0] // num_processes,) + shape[1:]
    # Explicit axes, as jax.make_mesh gives for one process.
    mesh = Mesh(mesh_utils.create_hybrid_device_mesh(
        per_process, (num_processes,) + (1,) * (len(shape) - 1), devices,
        process_is_granule=True), axis_names,
                axis_types=(AxisType.Explicit,) * len(shape))
  return Topology(axis_names, grid_shape, mesh)


def hier_topology(num_learners: int, group_size: int, node_devices: int = -1,
                  local_devices: int = -1, devices=None) -> Topology:
  """Hier-AVG's two-level topology: P/S nodes of S learners."""
  return make_topology((num_learners // group_size, group_size),
                       (NODE, LOCAL), (node_devices, local_devices), devices)


__all__ = ['Topology', 'make_topology', 'hier_topology', 'NODE', 'LOCAL',
           'UserError']
