r"""K-AVG against ASGD over one grid of learning rates (docs/hierarchy_study.md).

  python sweep.py --sweep=configs/sweeps/cifar10_lr_stability.py \
      --root=/tmp/cifar10_lr_stability --set=data.path=/path/to/cifar10

Tests the K-AVG paper's claim that K-AVG allows larger step sizes than
ASGD: the `:cpu` preset for half an epoch, plain SGD (no momentum, as ASGD's
momentum diverged in docs/reproduction.md) for both, seed 0, at each rate
of the grid. K-AVG averages all 8 learners every 16 steps; simulated ASGD
(hier_avg/algorithms/asgd.py) applies the 8 learners' gradients one by one,
each one step (8 updates) late. A rate at which a run diverges ends it
(exit 3, `training diverged` in its log); the sweep reports it as not
finished and goes on.
"""

from configs.sweeps import cpu_cifar10
from hier_avg.tools.sweeps import SweepSpec


def get_sweep():
  return SweepSpec(
      config=cpu_cifar10.CONFIG,
      overrides={**cpu_cifar10.overrides(epochs=0.5, eval_every=0),
                 'opt.momentum': 0.0, 'seed': 0},
      variants={
          'kavg_k16': {'hier.group_size': 1, 'hier.k1': 16, 'hier.k2': 1},
          'asgd': {'hier.algorithm': 'asgd', 'hier.staleness': 1},
      },
      grid={'opt.lr': [0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6]},
  )
