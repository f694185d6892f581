"""An outer optimizer at global averaging (SlowMo / DiLoCo style).

After the learners' models are averaged globally, the change since the last
global model, `anchor - average`, is treated as a pseudo-gradient and given
to an optax optimizer (SGD with `hier.outer_lr`, `hier.outer_momentum`,
Nesterov). The result is every learner's new model and the next anchor.
With outer lr 1 and no momentum the step returns the average exactly, so
plain Hier-AVG is the special case.
"""

import jax
import optax


def make_outer_optimizer(hier_config) -> optax.GradientTransformation | None:
  """SGD on the pseudo-gradient, or None when it would be the identity."""
  if hier_config.outer_lr == 1 and hier_config.outer_momentum == 0:
    return None
  return optax.sgd(hier_config.outer_lr,
                   momentum=hier_config.outer_momentum or None,
                   nesterov=hier_config.outer_nesterov)


def init(outer_tx: optax.GradientTransformation, params) -> dict:
  """One learner's outer state: the anchor (initial model) and optimizer."""
  return {'anchor': params, 'opt_state': outer_tx.init(params)}


def step(outer_tx: optax.GradientTransformation, average, outer_state):
  """`(average, outer_state) -> (new params, new outer_state)`, one learner.

  Written as `average + (g + update)` rather than `anchor + update`: with
  lr 1 and no momentum, `update == -g` exactly, so the result is exactly
  `average` (`anchor - (anchor - average)` would round).
  """
  anchor = outer_state['anchor']
  pseudo_grad = jax.tree.map(lambda a, p: a - p, anchor, average)
  update, opt_state = outer_tx.update(pseudo_grad, outer_state['opt_state'],
                                      anchor)
  params = jax.tree.map(lambda p, g, u: p + (g + u), average, pseudo_grad,
                        update)
  return params, {'anchor': params, 'opt_state': opt_state}
