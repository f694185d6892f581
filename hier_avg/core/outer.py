"""An outer optimizer at global averaging (SlowMo / DiLoCo style).

After the learners' models are averaged globally, the change since the last
global model, `anchor - average`, is treated as a pseudo-gradient and given
to an optax optimizer (SGD with `hier.outer_lr`, `hier.outer_momentum`,
Nesterov). The result is every learner's new model and the next anchor.
With outer lr 1 and no momentum the step returns the average exactly, so
plain Hier-AVG is the special case.

`hier.outer_lr_schedule` varies the outer lr over the run's outer steps
(outermost averagings), counted by the optimizer's own step count, which
lives in its state and so in every checkpoint. Outer step n = 1, 2, ...
of a warmup of W uses `outer_lr * n / W`; after it, 'constant' keeps
`outer_lr` and 'cosine' is optax's cosine over the remaining N - W steps
(N: the run's outer steps), from `outer_lr` at step W + 1 towards
`hier.outer_lr_final`, which it reaches one step after the run's last.
"""

import jax
import optax

from hier_avg.errors import require

OUTER_LR_SCHEDULES = ('constant', 'cosine')


def outer_lr_schedule(hier_config,
                      outer_steps: int | None = None) -> optax.Schedule:
  """The outer lr as a function of the outer optimizer's step count (0 at
  the first outer step). `outer_steps`: the run's outer steps, which
  'cosine' decays over."""
  lr, warmup = hier_config.outer_lr, hier_config.outer_warmup
  name = hier_config.outer_lr_schedule
  if name == 'cosine':
    # config_keys refuses 'cosine' where the count is not known up front.
    assert outer_steps is not None, 'cosine needs the run\'s outer steps'
    require(warmup == 0 or warmup < outer_steps,
            f'hier.outer_warmup={warmup} must be below the run\'s '
            f'{outer_steps} outer steps (outermost averagings) for '
            "hier.outer_lr_schedule='cosine'; shorten the warmup or "
            'lengthen the run (train.steps, train.epochs).')
    main = optax.cosine_decay_schedule(
        lr, max(outer_steps - warmup, 1),
        alpha=hier_config.outer_lr_final / lr)
  elif name == 'constant':
    main = optax.constant_schedule(lr)
  else:  # config_keys checks the name before anything is built.
    raise ValueError(f'unknown outer lr schedule {name!r}')
  if warmup <= 0:
    return main
  # Count c is outer step c + 1: the warmup reaches outer_lr at step W.
  return optax.join_schedules(
      [optax.linear_schedule(lr / warmup, lr, warmup - 1), main], [warmup])


def make_outer_optimizer(
    hier_config,
    outer_steps: int | None = None) -> optax.GradientTransformation | None:
  """SGD on the pseudo-gradient, or None when it would be the identity.

  `outer_steps`: the run's outer steps (for a 'cosine' schedule; None
  where no schedule needs it).
  """
  scheduled = (hier_config.outer_lr_schedule != 'constant' or
               hier_config.outer_warmup > 0)
  if (not scheduled and hier_config.outer_lr == 1 and
      hier_config.outer_momentum == 0):
    return None
  lr = (outer_lr_schedule(hier_config, outer_steps) if scheduled
        else hier_config.outer_lr)
  return optax.sgd(lr, momentum=hier_config.outer_momentum or None,
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
