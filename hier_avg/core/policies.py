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

import dataclasses

import jax
import jax.numpy as jnp

BATCH_STATS_POLICIES = ('average', 'local', 'recompute')
OPT_STATE_POLICIES = ('local', 'average', 'reset')


@dataclasses.dataclass(frozen=True)
class AveragingPolicy:
  """`hier.batch_stats` and `hier.opt_state`, and what they imply.

  The one place that turns the two config strings into behaviour: which
  parts averaging replaces by the mean, what happens to the optimizer state
  after an averaging, and whether evaluation recomputes BatchNorm
  statistics (and from how many batches).
  """
  batch_stats: str = 'average'
  opt_state: str = 'local'
  recompute_batches: int = 32

  @classmethod
  def from_config(cls, hier_config) -> 'AveragingPolicy':
    return cls(hier_config.batch_stats, hier_config.opt_state,
               hier_config.recompute_batches)

  @property
  def averaged_parts(self) -> tuple[str, ...]:
    """The parts of a learner's state that averaging replaces by the mean."""
    return (('params',) +
            (('batch_stats',) if self.batch_stats == 'average' else ()) +
            (('opt_state',) if self.opt_state == 'average' else ()))

  @property
  def recomputes_batch_stats(self) -> bool:
    return self.batch_stats == 'recompute'

  def after_averaging(self, state):
    """The state after an averaging: moments zeroed under 'reset'."""
    if self.opt_state != 'reset':
      return state
    return state.replace(opt_state=reset_optimizer_state(state.opt_state))


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
