"""Configs for in-process runs: a preset shrunk to seconds."""

from configs import cifar10
from hier_avg import config_keys
from hier_avg.errors import UserError


def tiny_config(steps: int, schedule: str = 'constant'):
  """The `:cpu` preset on 512 synthetic examples with an mlp, B = 8."""
  config = cifar10.get_config('cpu')
  config.data.name = 'synthetic'
  config.data.synthetic_train_examples = 512
  config.data.synthetic_test_examples = 64
  config.data.batch_size = 8
  config.model.name = 'mlp'
  config.opt.schedule = schedule
  config.train.steps = steps
  config.train.log_every = 4
  config.train.eval_every = 0
  return config


def assert_refused(test, message: str, **hier):
  """`tiny_config` with `hier` set is refused by `config_keys.validate`
  with one line matching `message`."""
  config = tiny_config(1)
  config.hier.update(**hier)
  with test.assertRaisesRegex(UserError, message) as raised:
    config_keys.validate(config)
  test.assertNotIn('\n', str(raised.exception))
