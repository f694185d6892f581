"""Up-front checks of config values, before any data or device work.

Each failure is a `UserError` naming the key, the bad value and the fix.
Checks that need more than the config (the mesh against the devices, the
batch against the data) live where that knowledge is.
"""

import numbers

from hier_avg.data import datasets
from hier_avg import models
from hier_avg.core import optim
from hier_avg.runtime import execution
from hier_avg.core import policies
from hier_avg.data import sampling
from hier_avg.data import streaming
from hier_avg.errors import require

ALGORITHMS = ('hier', 'asgd')


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


def _fraction(config, key: str) -> None:
  """A momentum: a number in [0, 1)."""
  value = _get(config, key)
  require(isinstance(value, numbers.Real) and not isinstance(value, bool)
          and 0 <= value < 1, f'{key}={value!r} must be a number in [0, 1).')


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
  for key in ('hier.num_learners', 'hier.group_size', 'hier.k1', 'hier.k2'):
    _integer(config, key, 1)
  _choice(config, 'hier.algorithm', ALGORITHMS)
  _integer(config, 'hier.staleness', 0)
  _choice(config, 'hier.batch_stats', policies.BATCH_STATS_POLICIES)
  _choice(config, 'hier.opt_state', policies.OPT_STATE_POLICIES)
  _integer(config, 'hier.recompute_batches', 1)
  _number(config, 'hier.outer_lr', 0, strict=True)
  _fraction(config, 'hier.outer_momentum')
  if config.hier.algorithm == 'asgd':
    # One shared model and optimizer: no averaging for these to act on.
    require(config.hier.outer_lr == 1 and config.hier.outer_momentum == 0,
            "hier.algorithm='asgd' has no global averaging for an outer "
            'optimizer; leave hier.outer_lr=1 and hier.outer_momentum=0.')
    require(config.hier.opt_state == 'local',
            "hier.algorithm='asgd' keeps one shared optimizer state; "
            f"hier.opt_state={config.hier.opt_state!r} applies to Hier-AVG "
            "only: leave it 'local'.")
    require(config.hier.batch_stats != 'local',
            "hier.algorithm='asgd' shares one model and its BatchNorm "
            "statistics; hier.batch_stats='local' applies to Hier-AVG only.")
  _choice(config, 'model.name', sorted(models.MODELS))
  _choice(config, 'model.stem', models.STEMS)
  require(config.model.stem == 'cifar' or
          config.model.name in models.STEM_MODELS,
          f'model.stem={config.model.stem!r} applies to '
          f'{", ".join(models.STEM_MODELS)} only; leave it \'cifar\' for '
          f'model.name={config.model.name!r}.')
  _choice(config, 'data.name', datasets.TFDS_NAMES +
          streaming.STREAMED_NAMES + ('folder', 'synthetic'))
  _integer(config, 'data.batch_size', 1)
  _integer(config, 'data.image_size', 1)
  _choice(config, 'data.sampling', sampling.SAMPLING_MODES)
  if config.data.name in streaming.STREAMED_NAMES:
    require(config.data.sampling == 'partition',
            f"data.sampling={config.data.sampling!r} needs random access, "
            f"but {config.data.name} is streamed; use "
            "data.sampling='partition'.")
  require(isinstance(config.data.augment, bool),
          f'data.augment={config.data.augment!r} must be True or False.')
  _number(config, 'opt.lr', 0, strict=True)
  _fraction(config, 'opt.momentum')
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
  _choice(config, 'mesh.round_loop', execution.ROUND_LOOPS)
  _choice(config, 'mesh.pack', execution.PACKS)
  _choice(config, 'model.conv', execution.CONV_CHOICES)
  _choice(config, 'model.dtype', tuple(models.DTYPES))
  _integer(config, 'mesh.max_unrolled_steps', 1)
  for key in ('mesh.node_devices', 'mesh.local_devices'):
    value = _get(config, key)
    require(isinstance(value, int) and (value == -1 or value >= 1),
            f'{key}={value!r} must be -1 (as many as fit) or an integer '
            '>= 1.')
