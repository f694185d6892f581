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


def average_compressed(tree, anchor, residual, axes: tuple[str, ...],
                       topology: Topology, kind: str):
  """Each group's `anchor + mean_j D(Q(x_j - anchor [+ r_j]))`.

  `compression.py` says why and how; here the payloads of a group are
  all-gathered over the level's mesh axes (one all-gather per payload
  array, dtype and mesh axis) and every device averages what it received
  in float32, over the level's block axes.

  Args:
    tree: the learners' parameters (floating leaves are averaged).
    anchor: the group's last common model, like `tree` (equal within the
      group).
    residual: float32 residuals like `tree` (error feedback), or None.
    axes: the level's grid axes.
    topology: the learner grid and mesh.
    kind: a `compression.COMPRESSIONS` kind other than 'none'.
  Returns:
    (averaged tree, new residuals or None).
  """
  nblock, block_dims, mesh_axes = _level_dims(axes, topology)
  names = topology.axis_names
  leaves, treedef = jax.tree.flatten(tree)
  groups = _dtype_groups(leaves)
  flats = _concatenate_by_dtype(leaves, groups, nblock)
  anchors = _concatenate_by_dtype(jax.tree.leaves(anchor), groups, nblock)
  residuals = (None if residual is None else _concatenate_by_dtype(
      jax.tree.leaves(residual), groups, nblock))
  means, kept = {}, {}
  for dtype, flat in flats.items():
    change = flat.astype(jnp.float32) - anchors[dtype].astype(jnp.float32)
    if residuals is not None:
      change = change + residuals[dtype]
    payload = compression.quantize(change, kind)
    if residuals is not None:
      kept[dtype] = change - compression.dequantize(payload, kind,
                                                     flat.shape[-1])
    wire = compression.to_wire(payload)
    for axis in mesh_axes:
      wire = {name: lax.all_gather(x, axis, axis=names.index(axis),
                                   tiled=True) for name, x in wire.items()}
    payload = compression.from_wire(wire, kind)
    mean = compression.dequantize(payload, kind, flat.shape[-1]).mean(
        axis=block_dims, keepdims=True)
    means[dtype] = (anchors[dtype].astype(jnp.float32) + mean).astype(dtype)
  averaged = jax.tree.unflatten(
      treedef, _split_by_dtype(means, leaves, groups, nblock))
  if residual is None:
    return averaged, None
  residual_leaves = jax.tree.leaves(residual)
  return averaged, jax.tree.unflatten(
      treedef, _split_by_dtype(kept, residual_leaves, groups, nblock))


def gathers_per_compressed_event(tree, axes: tuple[str, ...],
                                 topology: Topology, kind: str) -> int:
  """All-gathers `average_compressed` issues per event."""
  dtypes = len(_dtype_groups(jax.tree.leaves(tree)))
  return (dtypes * compression.payload_arrays(kind) *
          len(_mesh_axes(axes, topology)))


def compressed_bytes_per_learner(tree_one_learner, kind: str) -> int:
  """Bytes of one learner's compressed payload of `tree`: per dtype, its
  floating leaves side by side (int8 blocks run across leaves)."""
  leaves = jax.tree.leaves(tree_one_learner)
  return sum(compression.payload_bytes(sum(leaves[i].size for i in indices),
                                       kind)
             for indices in _dtype_groups(leaves).values())


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
