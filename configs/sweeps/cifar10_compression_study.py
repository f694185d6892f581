r"""Cheaper averaging between nodes on CIFAR-10 (cnn_small, CPU).

  python sweep.py --sweep=configs/sweeps/cifar10_compression_study.py \
      --root=/tmp/cifar10_compression_study --set=data.path=/path/to/cifar10

The hierarchy study's `two_levels` row (the `:cpu` preset, P = 8, groups of
4 averaging every 4 steps, all 8 every 16, 2 epochs) with the global
level's averaging changed one way at a time: sent as float32 (none, the
baseline), bfloat16, int8, or int8 with error feedback (`hier.compress`);
late by tau = 1 or 3 steps (`hier.delay`); in 4 fragments, one after each
local averaging (`hier.fragments`); and the Streaming DiLoCo recipe,
all three at once: 4 fragments, each late by one step and sent as int4,
or as int8 with error feedback. Local averaging stays as it is.
Seeds 0, 1, 2.
"""

from configs.sweeps import cpu_cifar10
from hier_avg.tools.sweeps import SweepSpec


def global_level(kind, error_feedback=False):
  return {'hier.compress': ('none', kind),
          'hier.error_feedback': (False, error_feedback)}


# Streaming DiLoCo's global level: 4 fragments, each one step late.
STREAMING = {'hier.fragments': (1, 4), 'hier.delay': (0, 1)}


def get_sweep():
  return SweepSpec(
      config=cpu_cifar10.CONFIG,
      overrides={**cpu_cifar10.overrides(epochs=2.0, eval_every=49),
                 'hier.levels': ((4, 4), (8, 16))},
      variants={
          'float32': {},
          'bfloat16': global_level('bfloat16'),
          'int8': global_level('int8'),
          'int8_feedback': global_level('int8', True),
          'int4': global_level('int4'),
          'delay1': {'hier.delay': (0, 1)},
          'delay3': {'hier.delay': (0, 3)},
          'fragments4': {'hier.fragments': (1, 4)},
          'streaming_int4': {**STREAMING, **global_level('int4')},
          'streaming_int8_feedback': {**STREAMING,
                                      **global_level('int8', True)},
      },
      grid={'seed': [0, 1, 2]},
  )
