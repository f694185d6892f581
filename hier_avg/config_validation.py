"""Up-front checks of config values, before any data or device work.

Each failure is a `UserError` naming the key, the bad value and the fix.
Checks that need more than the config (the mesh against the devices, the
batch against the data) live where that knowledge is.
"""

import numbers

from hier_avg import datasets, models, optim, packing, sampling, state
from hier_avg.errors import require


def _integer(config, key: str, minimum: int) -> None:
  value = _get(config, key)
  require(isinstance(value, numbers.Integral) and not isinstance(value, bool)
          and value >= minimum,
          f'{key}={value!r} must be an integer >= {minimum}.')


def _number(config, key: str, minimum: float, strict: bool = False) -> None:
  value = _get(config, key)
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
  ok = ok and (value > minimum if strict else value >= minimum)
  require(ok, f'{key}={value!r} must be a number '
          f'{">" if strict else ">="} {minimum}.')


def _choice(config, key: str, choices) -> None:
  value = _get(config, key)
  require(value in choices, f'unknown {key}={value!r}; choose one of '
          f'{", ".join(map(repr, choices))}.')


def _get(config, key: str):
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


def validate(config) -> None:
  """Raises UserError for the first bad value in `config`."""
  _integer(config, 'seed', 0)
  for key in ('hier.num_learners', 'hier.group_size'):
    _integer(config, key, 1)
  state.check_average(config.hier.average)
  _number(config, 'hier.outer_lr', 0, strict=True)
  _number(config, 'hier.outer_momentum', 0)
  require(config.hier.outer_momentum < 1, 'hier.outer_momentum='
          f'{config.hier.outer_momentum} must be < 1.')
  _choice(config, 'model.name', sorted(models.MODELS))
  _choice(config, 'data.name',
          datasets.TFDS_NAMES + ('folder', 'synthetic'))
  _integer(config, 'data.batch_size', 1)
  _choice(config, 'data.sampling', sampling.SAMPLING_MODES)
  require(isinstance(config.data.augment, bool),
          f'data.augment={config.data.augment!r} must be True or False.')
  _number(config, 'opt.lr', 0, strict=True)
  _number(config, 'opt.momentum', 0)
  require(config.opt.momentum < 1, f'opt.momentum={config.opt.momentum} '
          'must be < 1.')
  _number(config, 'opt.weight_decay', 0)
  _choice(config, 'opt.schedule', optim.SCHEDULES)
  _number(config, 'opt.warmup_epochs', 0)
  _number(config, 'train.epochs', 0)
  _integer(config, 'train.steps', 0)
  require(config.train.steps > 0 or config.train.epochs > 0,
          'set train.steps or train.epochs to a value > 0.')
  _integer(config, 'train.eval_every', 0)
  _integer(config, 'train.log_every', 1)
  _integer(config, 'train.eval_batch_size', 1)
  _integer(config, 'train.checkpoint_every', 0)
  _integer(config, 'train.keep_checkpoints', 1)
  _choice(config, 'mesh.round_loop', packing.ROUND_LOOPS)
  _choice(config, 'mesh.pack', packing.PACKS)
  _choice(config, 'model.conv', packing.CONV_CHOICES)
  _choice(config, 'model.dtype', tuple(models.DTYPES))
  _integer(config, 'mesh.max_unrolled_steps', 1)
  for key in ('mesh.node_devices', 'mesh.local_devices'):
    value = _get(config, key)
    require(isinstance(value, int) and (value == -1 or value >= 1),
            f'{key}={value!r} must be -1 (as many as fit) or an integer '
            '>= 1.')
