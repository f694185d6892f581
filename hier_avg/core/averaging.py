"""Averaging learners' state inside `shard_map`, one collective per dtype.

Inside the mapped function every array carries the device's block of learners
as its leading axes (one per grid axis). Averaging over a set of grid axes is
a mean over those block axes followed by a `lax.pmean` over the mesh axes of
the same names. The pytree is flattened into one vector per dtype first, so
an averaging event costs one all-reduce per dtype, not one per leaf; the
same packing makes gathering every learner's leaves (simulated ASGD) one
all-gather per dtype and mesh axis.
"""

import collections
import math

import jax
import jax.numpy as jnp
from jax import lax

from hier_avg.core import compression
from hier_avg.core.state import first
from hier_avg.core.topology import Topology


def _is_averaged(x) -> bool:
  # Integer leaves (optimizer step counts) agree across learners already.
  return jnp.issubdtype(x.dtype, jnp.floating)


def _dtype_groups(leaves, select=_is_averaged) -> dict:
  """Indices of the selected leaves, per dtype: one fused buffer each."""
  groups = collections.defaultdict(list)
  for i, leaf in enumerate(leaves):
    if select(leaf):
      groups[jnp.dtype(leaf.dtype)].append(i)
  return groups


def _concatenate_by_dtype(leaves, groups, nblock: int) -> dict:
  """One [block..., n] buffer per dtype: the group's leaves side by side."""
  return {dtype: jnp.concatenate(
      [leaves[i].reshape(leaves[i].shape[:nblock] + (-1,)) for i in indices],
      axis=-1) for dtype, indices in groups.items()}


def _split_by_dtype(buffers: dict, leaves, groups, nblock: int) -> list:
  """`leaves` with each grouped leaf cut back out of its dtype's buffer.

  A buffer's leading axes may differ from the leaves' block axes (an
  all-gather widens them); every cut leaf takes the buffer's.
  """
  out = list(leaves)
  for dtype, indices in groups.items():
    buffer, start = buffers[dtype], 0
    for i in indices:
      shape = leaves[i].shape[nblock:]
      stop = start + math.prod(shape)
      out[i] = buffer[..., start:stop].reshape(buffer.shape[:-1] + shape)
      start = stop
  return out


def _mesh_axes(axes: tuple[str, ...], topology: Topology) -> tuple[str, ...]:
  # Size-1 mesh axes need no collective at all.
  return tuple(a for a in topology.axis_names
               if a in axes and topology.mesh.shape[a] > 1)


def _level_dims(axes: tuple[str, ...], topology: Topology):
  """(block axes of the learners, those of them `axes` averages over, the
  mesh axes a collective must cross)."""
  names = topology.axis_names
  return (len(names), tuple(i for i, a in enumerate(names) if a in axes),
          _mesh_axes(axes, topology))


def average_block(tree, axes: tuple[str, ...], topology: Topology,
                  again: bool = False):
  """Replaces each learner's floating leaves by their mean over `axes`.

  Args:
    tree: a pytree whose leaves have the device's block shape as leading axes.
    axes: grid axes to average over (a level's axes).
    topology: the learner grid and mesh.
    again: a wider level averages some of the means again in the same
      step (fragments, `core/fragments.py`): they stay typed as varying
      over the mesh axes, as a collective over them requires (a pmean's
      result is typed as equal across its axes).
  Returns:
    The same tree with every floating leaf averaged across its group.
  """
  nblock, block_dims, mesh_axes = _level_dims(axes, topology)
  leaves, treedef = jax.tree.flatten(tree)
  groups = _dtype_groups(leaves)
  means = {}
  for dtype, flat in _concatenate_by_dtype(leaves, groups, nblock).items():
    mean = flat.mean(axis=block_dims, keepdims=True)
    if mesh_axes:
      mean = lax.pmean(mean, mesh_axes)
      if again:
        mean = lax.pcast(mean, mesh_axes, to='varying')
    means[dtype] = jnp.broadcast_to(mean, flat.shape)
  return jax.tree.unflatten(treedef, _split_by_dtype(means, leaves, groups, nblock))


def average_present(tree, weights, axes: tuple[str, ...],
                    topology: Topology):
  """Each group's weighted mean over `axes`: `weights` [block...] (0 for a
  learner left out; 1 each for a plain mean over those present) weigh
  each learner's floating leaves. Returns (the means, broadcast to every
  learner of the group; the total weight of each learner's group,
  [block...]). A group of total 0 gets zeros (its learners keep their
  own, `core/presence.py`).

  One all-reduce per dtype for the sums and one for the totals.
  """
  nblock, block_dims, _ = _level_dims(axes, topology)
  # Every axis of the level, size-1 ones too: psum needs them typed alike.
  mesh_axes = tuple(a for a in topology.axis_names if a in axes)
  leaves, treedef = jax.tree.flatten(tree)
  groups = _dtype_groups(leaves)
  count = lax.psum(weights.astype(jnp.float32).sum(
      axis=block_dims, keepdims=True), mesh_axes)
  means = {}
  for dtype, flat in _concatenate_by_dtype(leaves, groups, nblock).items():
    w = weights.astype(flat.dtype)[..., None]
    total = lax.psum((flat * w).sum(axis=block_dims, keepdims=True),
                     mesh_axes)
    mean = total / jnp.maximum(count, 1).astype(flat.dtype)[..., None]
    means[dtype] = jnp.broadcast_to(mean, flat.shape)
  return (jax.tree.unflatten(treedef,
                             _split_by_dtype(means, leaves, groups, nblock)),
          jnp.broadcast_to(count, weights.shape))


def average_compressed(tree, anchor, residual, axes: tuple[str, ...],
                       inner_axes: tuple[str, ...], topology: Topology,
                       kind: str):
  """Each group's new model through a compressed exchange between its
  inner groups (`compression.py` says why and how).

  Inside each inner group (the learners of `inner_axes`, on one host) the
  change since the anchor is reduced in float32 and left in shards, one
  per device of the group (a reduce-scatter); each inner group's shard is
  compressed (Q), the groups swap their compressed shards so that each
  device receives every group's piece of its part of the vector (an
  all-to-all), decodes and averages them in float32, compresses that mean
  again, and the compressed means are all-gathered between the groups and
  decoded; a float32 all-gather inside the group puts the shards together.
  Shards are whole compression blocks, so the result does not depend on
  how learners sit on devices.

  Args:
    tree: the learners' parameters (floating leaves are averaged).
    anchor: the group's last common model, like `tree` with size 1 along
      the level's axes (one copy of the group's, `state.Shared`).
    residual: float32 residuals like `tree` with size 1 along the inner
      groups' axes (error feedback: one per inner group), or None.
    axes: the level's grid axes.
    inner_axes: the grid axes of the inner groups that reduce in float32
      first (the level one in; () for the innermost: groups of one).
    topology: the learner grid and mesh.
    kind: a `compression.COMPRESSIONS` kind other than 'none'.
  Returns:
    (the groups' new models, shaped like `anchor`; new residuals, like
    `residual`, or None).
  """
  nblock, inner_dims, inner_mesh = _level_dims(inner_axes, topology)
  _, between_dims, between_mesh = _level_dims(_between(axes, inner_axes),
                                               topology)
  assert len(between_mesh) <= 1, (axes, inner_axes)  # Levels add one axis.
  shards = math.prod(topology.mesh.shape[a] for a in inner_mesh)
  pieces = math.prod(topology.mesh.shape[a] for a in between_mesh)
  leaves, treedef = jax.tree.flatten(tree)
  groups = _dtype_groups(leaves)
  flats = _concatenate_by_dtype(leaves, groups, nblock)
  anchors = _concatenate_by_dtype(jax.tree.leaves(anchor), groups, nblock)
  residuals = (None if residual is None else _concatenate_by_dtype(
      jax.tree.leaves(residual), groups, nblock))
  means, kept = {}, {}
  for dtype, flat in flats.items():
    n = flat.shape[-1]
    pad = -n % (shards * pieces * compression.block_size(kind))
    one = lambda x: _padded(first(x, inner_dims).astype(jnp.float32), pad)
    # Inside: the group's mean change, its shards scattered over the
    # group's devices (each device's learners summed first).
    change = (_padded(flat.astype(jnp.float32).mean(
        axis=inner_dims, keepdims=True), pad) - one(anchors[dtype]))
    if residuals is not None:
      change = change + one(residuals[dtype])
    if inner_mesh:
      change = lax.psum_scatter(change, inner_mesh,
                                scatter_dimension=change.ndim - 1,
                                tiled=True) / shards
    payload = compression.quantize(change, kind)
    if residuals is not None:
      kept[dtype] = _gathered(change - compression.dequantize(
          payload, kind, change.shape[-1]), inner_mesh, n,
                              residuals[dtype].shape)
    mean = _exchange(payload, kind, change.shape[-1], between_dims,
                     between_mesh, pieces)
    mean = _gathered(mean, inner_mesh, n, anchors[dtype].shape)
    means[dtype] = (anchors[dtype].astype(jnp.float32) + mean).astype(dtype)
  averaged = jax.tree.unflatten(treedef, _split_by_dtype(
      means, jax.tree.leaves(anchor), groups, nblock))
  if residual is None:
    return averaged, None
  residual_leaves = jax.tree.leaves(residual)
  return averaged, jax.tree.unflatten(
      treedef, _split_by_dtype(kept, residual_leaves, groups, nblock))


def _between(axes: tuple[str, ...], inner_axes: tuple[str, ...]):
  """The axes of a level that its inner groups exchange over."""
  return tuple(a for a in axes if a not in inner_axes)


def _exchange(payload, kind: str, n: int, between_dims, between_mesh,
              pieces: int):
  """The float32 mean over the groups of a level of their compressed
  changes [..., n], each group's `payload`: the compressed all-reduce
  between groups (`average_compressed`), [block with 1 on the level's
  axes..., n]."""
  chunk = n // pieces
  # Each device's part of the vector: chunk k of every group's payload.
  wire = compression.to_wire(payload)
  wire = {name: x.reshape(x.shape[:-1] + (pieces, -1))
          for name, x in wire.items()}
  if between_mesh:
    wire = {name: lax.all_to_all(x, between_mesh[0], x.ndim - 2, x.ndim - 2)
            for name, x in wire.items()}
  values = compression.dequantize(compression.from_wire(wire, kind), kind,
                                  chunk)
  part = values.mean(axis=between_dims + (values.ndim - 2,), keepdims=True)
  part = part.reshape(part.shape[:-2] + (chunk,))
  # The parts' means, compressed again, gathered back into the vector.
  wire = compression.to_wire(compression.quantize(part, kind))
  if between_mesh:
    wire = {name: lax.all_gather(x, between_mesh[0], axis=x.ndim - 1,
                                 tiled=True) for name, x in wire.items()}
  return compression.dequantize(compression.from_wire(wire, kind), kind, n)


def _padded(x, pad: int):
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)]) if pad else x


def _gathered(shard, inner_mesh, n: int, shape):
  """The float32 shards of a vector over an inner group's devices put
  together, the padding cut, and broadcast to the block's `shape`."""
  if inner_mesh:
    shard = lax.all_gather(shard, inner_mesh, axis=shard.ndim - 1,
                           tiled=True)
  return jnp.broadcast_to(shard[..., :n], shape)


def compressed_collectives_per_event(tree, axes: tuple[str, ...],
                                     inner_axes: tuple[str, ...],
                                     topology: Topology, kind: str,
                                     error_feedback: bool) -> int:
  """Collectives `average_compressed` issues per event: per dtype, inside
  the group a reduce-scatter and an all-gather (two with error feedback),
  between groups an all-to-all and an all-gather per payload array."""
  dtypes = len(_dtype_groups(jax.tree.leaves(tree)))
  inside = (2 + error_feedback) * bool(_mesh_axes(inner_axes, topology))
  between = 2 * compression.payload_arrays(kind) * bool(_mesh_axes(
      _between(axes, inner_axes), topology))
  return dtypes * (inside + between)


def value_groups(tree_one_learner) -> list[tuple[int, int]]:
  """(values, bytes per value) of each buffer an averaging of `tree`
  packs: per dtype, its floating leaves side by side."""
  leaves = jax.tree.leaves(tree_one_learner)
  return [(sum(leaves[i].size for i in indices),
           leaves[indices[0]].dtype.itemsize)
          for indices in _dtype_groups(leaves).values()]


def collectives_per_event(tree, axes: tuple[str, ...],
                          topology: Topology) -> int:
  """All-reduces `average_block(tree, axes, topology)` issues: one per dtype.

  None when the level's mesh axes all have size 1 (the group lives on one
  device and its mean is a local reduction).
  """
  if not _mesh_axes(axes, topology):
    return 0
  return len(_dtype_groups(jax.tree.leaves(tree)))


def bytes_per_learner(tree_one_learner) -> int:
  """Bytes one learner contributes to an averaging of `tree` (float leaves)."""
  return sum(x.size * x.dtype.itemsize
             for x in jax.tree.leaves(tree_one_learner) if _is_averaged(x))


def gather_learners(tree, topology: Topology):
  """Every learner's leaves on every device: block axes -> whole grid axes.

  Inside `shard_map`, leaves [block..., x] become [grid..., x], in learner
  order. Leaves are packed into one buffer per dtype first, so this is one
  all-gather per dtype per mesh axis of size > 1 (`gathers_per_event`).
  """
  nblock = len(topology.axis_names)
  leaves, treedef = jax.tree.flatten(tree)
  groups = _dtype_groups(leaves, select=lambda leaf: True)
  buffers = _concatenate_by_dtype(leaves, groups, nblock)
  for i, axis in enumerate(topology.axis_names):
    if topology.mesh.shape[axis] > 1:
      buffers = {dtype: lax.all_gather(x, axis, axis=i, tiled=True)
                 for dtype, x in buffers.items()}
  return jax.tree.unflatten(treedef, _split_by_dtype(buffers, leaves, groups, nblock))


def gathers_per_event(tree, topology: Topology) -> int:
  """All-gathers `gather_learners(tree, topology)` issues."""
  dtypes = len(_dtype_groups(jax.tree.leaves(tree), select=lambda leaf: True))
  return dtypes * sum(topology.mesh.shape[a] > 1
                      for a in topology.axis_names)


def squared_distances(tree, means, nblock: int):
  """Each learner's squared distance from its group mean, [block...].

  `means` is `average_block(tree, ...)`: the distance is measured on the
  device, from values it holds anyway, so it costs no communication. It is
  the sum over every floating element of `(x - mean)**2`, in float32.
  """
  def one(x, mean):
    diff = (x - mean).astype(jnp.float32)
    return jnp.sum(diff * diff, axis=tuple(range(nblock, x.ndim)))
  pairs = [one(x, m) for x, m in zip(jax.tree.leaves(tree),
                                     jax.tree.leaves(means))
           if _is_averaged(x)]
  return sum(pairs[1:], pairs[0])
