"""What happens at averaging to the state that is not a parameter.

`hier.batch_stats` (BatchNorm running statistics):
  'average'   averaged with the parameters at every averaging (default);
  'local'     each learner keeps its own;
  'recompute' kept local while training; before every evaluation (and for
              the exported model) recomputed from training data for the
              globally averaged parameters ("precise BN": the mean of the
              batch statistics of `hier.recompute_batches` batches).
`hier.opt_state` (optimizer state, e.g. momentum):
  'local'     each learner keeps its own (default);
  'average'   averaged with the parameters;
  'reset'     floating-point state set to zero at every averaging; step
              counts are kept, so learning-rate schedules go on.

Running statistics never feed back into training (training normalizes by
batch statistics), and they are an exponential moving average, which is
linear: so 'average' and 'local' give the same globally averaged model.
They differ in the bytes sent and in what each single learner holds.
"""

import jax
import jax.numpy as jnp

from hier_avg.errors import require

BATCH_STATS_POLICIES = ('average', 'local', 'recompute')
OPT_STATE_POLICIES = ('local', 'average', 'reset')


def averaged_parts(batch_stats: str, opt_state: str) -> tuple[str, ...]:
  """The parts of a learner's state that averaging replaces by the mean."""
  require(batch_stats in BATCH_STATS_POLICIES,
          f'unknown hier.batch_stats={batch_stats!r}; choose one of '
          f'{", ".join(map(repr, BATCH_STATS_POLICIES))}.')
  require(opt_state in OPT_STATE_POLICIES,
          f'unknown hier.opt_state={opt_state!r}; choose one of '
          f'{", ".join(map(repr, OPT_STATE_POLICIES))}.')
  return (('params',) + (('batch_stats',) if batch_stats == 'average' else ())
          + (('opt_state',) if opt_state == 'average' else ()))


def reset_optimizer_state(opt_state):
  """Zero floating leaves (momentum, ...); integer leaves (counts) kept."""
  return jax.tree.map(
      lambda x: jnp.zeros_like(x) if jnp.issubdtype(x.dtype, jnp.floating)
      else x, opt_state)


def batch_statistics(model, bn_momentum: float, params, batch_stats,
                     images_BxHxWxC):
  """Every BatchNorm's statistics of one batch (train-mode normalization).

  The model's update is `momentum * running + (1 - momentum) * batch`, so
  starting from zero running statistics it returns `(1 - momentum) *
  batch`: dividing by `1 - momentum` gives the batch statistics themselves,
  for any network, without knowing where its BatchNorms are.
  """
  zeros = jax.tree.map(jnp.zeros_like, batch_stats)
  _, updates = model.apply({'params': params, 'batch_stats': zeros},
                           images_BxHxWxC, train=True,
                           mutable=['batch_stats'])
  return jax.tree.map(lambda x: x.astype(jnp.float32) / (1 - bn_momentum),
                      updates['batch_stats'])
