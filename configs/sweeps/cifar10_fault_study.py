r"""The fault study of docs/fault_study.md: cnn_small on CIFAR-10, CPU.

  python sweep.py --sweep=configs/sweeps/cifar10_fault_study.py \
      --root=/tmp/cifar10_fault_study --set=data.path=/path/to/cifar10

The hierarchy study's setup (configs/sweeps/cifar10_hierarchy_study.py:
the `:cpu` preset, P = 8, 2 epochs, seeds 0, 1, 2) with simulated node
failures and stragglers. The simulated cluster is 2 nodes of 4 learners
(a node per group of 4: the unit that fails), each learner's step taking
`STEP_S` simulated seconds, averagings inside a node over `INTRA_GBPS`
and between the nodes over `INTER_GBPS` (hier_avg/tools/simulated_clock.py).
Each seed draws its own failures and speeds (`faults.seed` follows `seed`).
"""

from configs.sweeps import cpu_cifar10
from hier_avg.tools.sweeps import SweepSpec

STEP_S = 0.05       # Simulated compute seconds per learner-step.
INTRA_GBPS = 400.0  # Links inside a node.
INTER_GBPS = 1.0    # The link between the nodes.
DOWNTIME = 32       # Steps a failed node stays down (two global periods).
# Node failure rates: mean up steps between a node's failures.
RATES = {'': 0, '_f400': 400, '_f100': 100}

# Each with nodes of 4 (a K-AVG node's own averaging coincides with the
# global one, which replaces it), and its depth.
ALGORITHMS = {
    'sync': ({'hier.group_size': 4, 'hier.k1': 1, 'hier.k2': 1}, 2),
    'kavg': ({'hier.group_size': 4, 'hier.k1': 16, 'hier.k2': 1}, 2),
    'two_levels': ({'hier.levels': ((4, 4), (8, 16))}, 2),
    'three_levels': ({'hier.levels': ((2, 2), (4, 4), (8, 16))}, 3),
}


def _levels(name: str) -> dict:
  """An algorithm's keys and its links: inside a node but the outermost."""
  keys, depth = ALGORITHMS[name]
  return {**keys,
          'faults.link_gbps': (INTRA_GBPS,) * (depth - 1) + (INTER_GBPS,)}


def _failures(mtbf: int) -> dict:
  return ({'faults.node_mtbf_steps': mtbf,
           'faults.node_downtime_steps': DOWNTIME} if mtbf else {})


def _variants() -> dict:
  variants = {}
  for name in ALGORITHMS:
    for suffix, mtbf in RATES.items():
      variants[name + suffix] = {**_levels(name), **_failures(mtbf)}
  # A node coming back keeps its old model until the next averaging.
  variants['two_levels_f100_stale'] = {**variants['two_levels_f100'],
                                       'faults.heal': 'stale'}
  variants['two_levels_f100_samples'] = {**variants['two_levels_f100'],
                                         'hier.weighting': 'samples'}
  # Stragglers: lognormal step times, periods in steps or in time.
  slow = {**_levels('two_levels'), 'faults.speed': 'lognormal',
          'faults.speed_sigma': 0.5}
  variants['two_levels_slow_steps'] = slow
  variants['two_levels_slow_time'] = {**slow, 'hier.period_unit': 'time'}
  return variants


def get_sweep():
  return SweepSpec(
      config=cpu_cifar10.CONFIG,
      overrides={**cpu_cifar10.overrides(epochs=2.0, eval_every=49),
                 'faults.step_s': STEP_S},
      variants=_variants(),
      grid={'seed': [0, 1, 2]},
      linked={'faults.seed': 'seed'},
      accuracy_targets=(0.60,),
  )
