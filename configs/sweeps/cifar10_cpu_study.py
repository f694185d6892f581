r"""The reproduction study of docs/reproduction.md: cnn_small on CIFAR-10, CPU.

  python sweep.py --sweep=configs/sweeps/cifar10_cpu_study.py \
      --root=/tmp/cifar10_cpu_study --set=data.path=/path/to/cifar10

The `:cpu` preset (cnn_small, P = 8 learners, B = 32 each, SGD lr 0.05,
momentum 0.9, constant lr, no augmentation, no weight decay) for 3 epochs,
every algorithm with the same hyperparameters and the same seeds; all
learners packed on one device, so no fake devices are needed. `data.path`
is a CIFAR-10 image folder (`{train,test}/<class>/*.jpg`).
"""

from configs.sweeps import cpu_cifar10
from hier_avg.tools.sweeps import SweepSpec


def hier(group_size, k1, k2):
  return {'hier.group_size': group_size, 'hier.k1': k1, 'hier.k2': k2}


def get_sweep():
  return SweepSpec(
      config=cpu_cifar10.CONFIG,
      # Evaluations about every half epoch (195 steps).
      overrides=cpu_cifar10.overrides(epochs=3.0, eval_every=98),
      variants={
          # Synchronous SGD: averaging after every step.
          'sync': hier(4, 1, 1),
          # K-AVG (local SGD), every learner averages every K steps.
          'kavg_k4': hier(1, 4, 1),
          'kavg_k16': hier(1, 16, 1),
          # Hier-AVG with the global period of kavg_k16 (16 steps), and
          # local averaging every step or every 4 steps, in groups of 4 or 2.
          'hier_s4_k1x16': hier(4, 1, 16),
          'hier_s4_k4x4': hier(4, 4, 4),
          'hier_s2_k4x4': hier(2, 4, 4),
          # Four times less frequent global averaging (every 64 steps).
          'hier_s4_k4x16': hier(4, 4, 16),
          # Simulated ASGD (hier_avg/algorithms/asgd.py): P = 8 sequential updates per
          # step, each gradient one step (8 updates) late plus its place in
          # line. Without momentum and at half the lr: momentum 0.9 at
          # lr 0.05 / 8, and plain SGD at lr 0.05, diverged within 60 steps.
          'asgd': {'hier.algorithm': 'asgd', 'hier.staleness': 1,
                   'opt.momentum': 0.0, 'opt.lr': 0.025},
      },
      grid={'seed': [0, 1, 2]},
      # Three seeds for the headline rows, fewer for the others (CPU time).
      restrict={'kavg_k4': {'seed': [0]}, 'hier_s4_k1x16': {'seed': [0]},
                'hier_s2_k4x4': {'seed': [0]},
                'hier_s4_k4x16': {'seed': [0, 1]}},
  )
