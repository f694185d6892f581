"""Configs for in-process runs: a preset shrunk to seconds."""

from configs import cifar10


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
