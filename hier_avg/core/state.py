"""The training state of all learners, as one sharded pytree."""

from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp


# `TrainState.step` is int32: no run is longer.
MAX_STEPS = 2**31 - 1


class TrainState(flax.struct.PyTreeNode):
  """Every learner's state, with leading learner-grid axes, plus the step.

  `params`, `batch_stats`, `opt_state` and `rng` have leaves of shape
  `grid_shape + leaf_shape`, sharded over the mesh; `step` (local steps done
  by every learner) is a replicated int32 scalar.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # Typed PRNG keys, one per learner.
  # With an outer optimizer: {'anchor': the model after the last global
  # averaging, 'opt_state': the outer optimizer's state}, `Shared` by all
  # learners. None without.
  outer: Any = None
  # Simulated ASGD with staleness tau > 0: the shared model of the last tau
  # steps, a ring buffer with leaves grid_shape + (tau,) + leaf_shape (step
  # t reads and then overwrites slot t % tau). None otherwise.
  stale: Any = None
  # What the levels' exchanges keep (`core/exchange.py`): with compressed
  # averaging (`core/compression.py`) 'anchor': {level: the model its
  # groups last held in common, `Shared` by each group} and 'residual':
  # {level: what compression lost, float32, `Shared` by each inner group,
  # where error feedback is on}; with delayed averaging (`hier.delay`)
  # 'inflight': {level or level_fragment<f>: the event started and not
  # yet applied (`exchange.InFlight`)}. None without either.
  comm: Any = None
  # With simulated outages (`core/membership.py`): {'up': [grid] bool,
  # whether each learner took the last step}. None without.
  members: Any = None


class Shared(flax.struct.PyTreeNode):
  """Leaves that every learner of a group holds alike, kept once per device.

  The learners of a group along grid `axes` (a level's groups: all the
  learners for the outermost level) hold these leaves identically (an
  outer optimizer's state, a compressed level's anchor), so a device
  keeps one copy of its block's learners', not one per learner: with P
  learners packed on a device, P times less. Leaves have the learner
  grid's leading axes with size 1 along `axes` in each device's block;
  as a whole array, one copy per device (the mesh's size along `axes`,
  the engine's stored form) or one per group (size 1: what `shared` makes
  and checkpoints hold, so that a run resumes on any mesh;
  `runtime/shared_layout.py`).
  """
  value: Any
  axes: tuple[str, ...] = flax.struct.field(pytree_node=False)


def first(x, dims):
  """`x` with only index 0 kept along `dims` (as size-1 axes): one copy
  of what the learners along those grid axes hold alike."""
  index = tuple(slice(0, 1) if d in dims else slice(None)
                for d in range(x.ndim))
  return x[index]


def shared(tree, axes: Sequence[str],
           axis_names: Sequence[str]) -> Shared:
  """`tree` (leaves with the grid's `axis_names` leading, equal along
  `axes`) kept once along `axes`: a device block's copy inside
  `shard_map`, the group's copy outside."""
  dims = tuple(i for i, a in enumerate(axis_names) if a in axes)
  return Shared(jax.tree.map(lambda x: first(x, dims), tree), tuple(axes))


def is_shared(x) -> bool:
  return isinstance(x, Shared)


def per_learner(tree, grid_shape: Sequence[int]):
  """`tree` (a state or part of one, stored as the engine keeps it) with
  every `Shared` leaf given to each learner: each learner gets its
  device's copy, as grid-shaped leaves, unwrapped."""
  def expand(x):
    for d, (n, g) in enumerate(zip(x.shape, grid_shape)):
      if n != g:  # A device's copy for each learner of its block.
        x = jnp.repeat(x, g // n, axis=d)
    return x
  return jax.tree.map(
      lambda x: jax.tree.map(expand, x.value) if is_shared(x) else x, tree,
      is_leaf=is_shared)


def state_specs(learner_spec, replicated_spec,
                extra: Sequence[str] = ()) -> TrainState:
  """PartitionSpecs for a `TrainState` (a pytree prefix of it).

  `extra`: the optional fields ('outer', 'stale', 'comm', 'members') the
  algorithm fills; they shard like the learners, the others stay None.
  """
  return TrainState(step=replicated_spec, params=learner_spec,
                    batch_stats=learner_spec, opt_state=learner_spec,
                    rng=learner_spec,
                    outer=learner_spec if 'outer' in extra else None,
                    stale=learner_spec if 'stale' in extra else None,
                    comm=learner_spec if 'comm' in extra else None,
                    members=learner_spec if 'members' in extra else None)
