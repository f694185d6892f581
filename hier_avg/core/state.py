"""The training state of all learners, as one sharded pytree."""

from typing import Any

import flax.struct
import jax

from hier_avg.errors import require

# Parts of a learner's state that `hier.average` can name.
AVERAGEABLE = ('params', 'batch_stats', 'opt_state')


def check_average(average) -> tuple[str, ...]:
  """`hier.average` as a tuple, or a UserError saying what it may hold."""
  average = tuple(average)
  require('params' in average and set(average) <= set(AVERAGEABLE),
          f"hier.average={average} must include 'params' and may add "
          "'batch_stats' and 'opt_state'.")
  return average


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
  # averaging, 'opt_state': the outer optimizer's state}, kept per learner
  # (all copies equal) so it shards like the parameters. None without.
  outer: Any = None
  # Simulated ASGD with staleness tau > 0: the shared model of the last tau
  # steps, a ring buffer with leaves grid_shape + (tau,) + leaf_shape (step
  # t reads and then overwrites slot t % tau). None otherwise.
  stale: Any = None


def state_specs(learner_spec, replicated_spec, has_outer: bool = False,
                has_stale: bool = False) -> TrainState:
  """PartitionSpecs for a `TrainState` (a pytree prefix of it)."""
  return TrainState(step=replicated_spec, params=learner_spec,
                    batch_stats=learner_spec, opt_state=learner_spec,
                    rng=learner_spec,
                    outer=learner_spec if has_outer else None,
                    stale=learner_spec if has_stale else None)
