"""Learning-rate schedules and the per-learner optimizer, all through optax.

Weight decay is *coupled* L2 regularization, as in `torch.optim.SGD`: the
gradient gets `weight_decay * params` added before momentum. The update stays
linear in the gradient, which is what makes averaging models after every step
equal to averaging gradients (synchronous SGD).
"""

import optax

SCHEDULES = ('constant', 'step', 'cosine')


def horizon(opt_config, total_steps: int) -> int | None:
  """Steps a length-dependent schedule ends at; None if it has no end.

  Only 'cosine' depends on the run's length: 'constant' has no end and
  'step' is in epochs. `opt.horizon_steps` fixes it; 0 means the run's
  length, so a run resumed with another length would bend its curve (the
  train loop refuses that, see `checkpoint.check_horizon`).
  """
  if opt_config.schedule != 'cosine':
    return None
  return opt_config.horizon_steps or total_steps


def learning_rate_schedule(opt_config, steps_per_epoch: int,
                           total_steps: int) -> optax.Schedule:
  """The config's schedule, in local steps, after a linear warmup from 0."""
  lr = opt_config.lr
  warmup = int(round(opt_config.warmup_epochs * steps_per_epoch))
  name = opt_config.schedule
  if name == 'constant':
    main = optax.constant_schedule(lr)
  elif name == 'step':
    boundaries = {int(round(m * steps_per_epoch)) - warmup:
                  opt_config.decay_factor for m in opt_config.milestones}
    main = optax.piecewise_constant_schedule(lr, boundaries)
  elif name == 'cosine':
    main = optax.cosine_decay_schedule(
        lr, max(horizon(opt_config, total_steps) - warmup, 1))
  else:  # config_keys checks opt.schedule before anything is built.
    raise ValueError(f'unknown schedule {name!r}')
  if warmup <= 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def make_optimizer(opt_config,
                   schedule: optax.Schedule) -> optax.GradientTransformation:
  """SGD with optional (Nesterov) momentum and coupled weight decay."""
  parts = []
  if opt_config.weight_decay:
    parts.append(optax.add_decayed_weights(opt_config.weight_decay))
  parts.append(optax.sgd(schedule, momentum=opt_config.momentum or None,
                         nesterov=opt_config.nesterov))
  return optax.chain(*parts)
