"""The training state of all learners, as one sharded pytree."""

from typing import Any

import flax.struct
import jax

# Parts of a learner's state that `hier.average` can name.
AVERAGEABLE = ('params', 'batch_stats', 'opt_state')


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



def state_specs(learner_spec, replicated_spec) -> TrainState:
  """PartitionSpecs for a `TrainState` (a pytree prefix of it)."""
  return TrainState(step=replicated_spec, params=learner_spec,
                    batch_stats=learner_spec, opt_state=learner_spec,
                    rng=learner_spec)
