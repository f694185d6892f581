"""The training state of all learners, as one sharded pytree."""

from typing import Any, Sequence

import flax.struct
import jax


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
  # averaging, 'opt_state': the outer optimizer's state}, kept per learner
  # (all copies equal) so it shards like the parameters. None without.
  outer: Any = None
  # Simulated ASGD with staleness tau > 0: the shared model of the last tau
  # steps, a ring buffer with leaves grid_shape + (tau,) + leaf_shape (step
  # t reads and then overwrites slot t % tau). None otherwise.
  stale: Any = None
  # What the levels' exchanges keep (`core/exchange.py`), per learner:
  # with compressed averaging (`core/compression.py`) 'anchor': {level: the
  # model its group last held in common} and 'residual': {level: what
  # compression lost, float32, where error feedback is on}; with delayed
  # averaging (`hier.delay`) 'inflight': {level or level_fragment<f>: the
  # event started and not yet applied (`exchange.InFlight`)}. None without
  # either.
  comm: Any = None


def state_specs(learner_spec, replicated_spec,
                extra: Sequence[str] = ()) -> TrainState:
  """PartitionSpecs for a `TrainState` (a pytree prefix of it).

  `extra`: the optional fields ('outer', 'stale', 'comm') the algorithm
  fills; they shard like the learners, the others stay None.
  """
  return TrainState(step=replicated_spec, params=learner_spec,
                    batch_stats=learner_spec, opt_state=learner_spec,
                    rng=learner_spec,
                    outer=learner_spec if 'outer' in extra else None,
                    stale=learner_spec if 'stale' in extra else None,
                    comm=learner_spec if 'comm' in extra else None)
