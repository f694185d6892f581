"""Where a `Shared` leaf lives: once per device while training, once per
group in a checkpoint.

The engine stores a `core/state.Shared` leaf once per device: the mesh's
size along the group's axes, sharded like the learners, so each device's
block keeps one copy. Checkpoints hold it once per group (size 1 along
those axes, replicated over their mesh axes), which restores on any mesh.
Each device's block is the same in both forms (its copy), so going from
one to the other moves nothing between devices.
"""

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from hier_avg.core.state import Shared, is_shared
from hier_avg.core.topology import Topology


class SharedLayout:
  """The two forms of the `Shared` leaves of states on `topology`."""

  def __init__(self, topology: Topology):
    self.topology = topology
    self._conversions = {}

  def one_per_device(self, state):
    """`state` (outside `shard_map`, its `Shared` leaves once per group,
    as `state.shared` makes them) with those leaves once per device."""
    names, mesh = self.topology.axis_names, self.topology.mesh_shape

    def per_device(shared_leaf: Shared):
      return jax.tree.map(lambda x: jnp.broadcast_to(x, tuple(
          m if a in shared_leaf.axes else n
          for a, m, n in zip(names, mesh, x.shape)) + x.shape[len(names):]),
                          shared_leaf)
    return jax.tree.map(lambda x: per_device(x) if is_shared(x) else x,
                        state, is_leaf=is_shared)

  def portable(self, state):
    """`state` as checkpoints hold it: `Shared` leaves once per group, so
    that it restores on another mesh."""
    return self._regrouped(state, True)

  def from_portable(self, state):
    """A `portable` state (restored on this mesh) stored once per device."""
    return self._regrouped(state, False)

  def _regrouped(self, state, portable: bool):
    leaves, treedef = jax.tree.flatten(state, is_leaf=is_shared)
    where = [i for i, x in enumerate(leaves) if is_shared(x)]
    if not where:
      return state
    shared = [leaves[i] for i in where]
    if portable not in self._conversions:
      names = self.topology.axis_names
      specs = lambda per_group: [jax.tree.map(lambda _, s=s: PartitionSpec(
          *(None if per_group and a in s.axes else a for a in names)), s)
                                 for s in shared]
      # The copies are equal across the group's devices (unchecked: what
      # makes them equal is the algorithm's averaging).
      self._conversions[portable] = jax.jit(jax.shard_map(
          lambda x: x, mesh=self.topology.mesh,
          in_specs=(specs(not portable),), out_specs=specs(portable),
          check_vma=False))
    for i, leaf in zip(where, self._conversions[portable](shared)):
      leaves[i] = leaf
    return jax.tree.unflatten(treedef, leaves)
