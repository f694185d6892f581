"""Compiled kernels that look at the averaged model; no learner changes.

`global_average` takes the mean model over all learners (over those up,
with simulated outages); `eval_sums` scores a batch split over every
device; `batch_statistics` computes BatchNorm statistics for recomputing
them (`hier.batch_stats='recompute'`). The host loops that feed them live
in `evaluation.py`.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec
import optax

from hier_avg.core import averaging
from hier_avg.core.learner import Learner
from hier_avg.core.topology import Topology


class EvalKernels:
  """The kernels of one learner type on one topology, compiled on first use."""

  def __init__(self, learner: Learner, topology: Topology):
    self.learner = learner
    self.topology = topology

  @functools.cached_property
  def global_average(self):
    """`state -> (params, batch_stats)` of the mean over all learners; with
    simulated outages, over the learners up (the model the live run has:
    a learner down holds a stale one).

    A pure function of the state: no learner is changed.
    """
    topology = self.topology
    first = (0,) * len(topology.grid_shape)

    def block_mean(params, batch_stats, up=None):
      tree, axes = (params, batch_stats), topology.axis_names
      mean = (averaging.average_block(tree, axes, topology) if up is None
              else averaging.average_present(tree, up, axes, topology)[0])
      return jax.tree.map(lambda x: x[first], mean)

    def average(state):
      parts = (state.params, state.batch_stats) + (
          () if state.members is None else (state.members['up'],))
      # The mean is replicated by construction; on size-1 mesh axes no
      # pmean runs, so the varying-axes check cannot see that and is
      # switched off.
      return jax.shard_map(
          block_mean, mesh=topology.mesh,
          in_specs=(topology.learner_spec,) * len(parts),
          out_specs=PartitionSpec(), check_vma=False)(*parts)

    return jax.jit(average)

  @functools.cached_property
  def eval_sums(self):
    """Compiled `(params, batch_stats, images, labels, valid) -> sums`.

    `sums` = (correct predictions, summed cross-entropy) over the examples
    with `valid` set, replicated. The batch comes sharded over every device
    (`topology.batch_sharding`) and only two scalars come back, so it works
    the same on one host or many.
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
