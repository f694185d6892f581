r"""The hierarchy study of docs/hierarchy_study.md: cnn_small on CIFAR-10, CPU.

  python sweep.py --sweep=configs/sweeps/cifar10_hierarchy_study.py \
      --root=/tmp/cifar10_hierarchy_study --set=data.path=/path/to/cifar10

The `:cpu` preset of docs/reproduction.md (cnn_small, P = 8 learners, B = 32
each, SGD lr 0.05, momentum 0.9, constant lr, no augmentation) for 2 epochs,
every row with the same hyperparameters and seeds 0, 1, 2. All rows but
`sync` and `kavg_k16` average globally every 16 steps at the start; they
differ in what happens inside that period (a third level, a synchronous
warmup) or in how the periods change (AdaComm). `data.path` is a CIFAR-10
image folder (`{train,test}/<class>/*.jpg`).

The report models each run's wall clock on 2 nodes of 4 GPUs (one learner
per GPU, a node per group of 4, NVLink inside) for three links between the
nodes, from a datacentre's InfiniBand to a wide-area link
(`sweeps.modeled_seconds`).
"""

from configs.sweeps import cpu_cifar10
from hier_avg.tools.cost_model import Cluster, Link
from hier_avg.tools.sweeps import SweepSpec

NVLINK = Link(latency_s=5e-6, bytes_per_s=150e9)


def nodes(link: Link) -> Cluster:
  return Cluster(intra=NVLINK, inter=link, devices_per_node=4)

# Groups of 4 average every 4 steps, all 8 learners every 16 steps.
TWO_LEVELS = ((4, 4), (8, 16))


def get_sweep():
  return SweepSpec(
      config=cpu_cifar10.CONFIG,
      # Evaluations about every quarter epoch (195 steps).
      overrides={**cpu_cifar10.overrides(epochs=2.0, eval_every=49),
                 'hier.measure_spread': True},
      variants={
          # The ends of the spectrum, for accuracy against modeled time.
          'sync': {'hier.group_size': 4, 'hier.k1': 1, 'hier.k2': 1},
          'kavg_k16': {'hier.group_size': 1, 'hier.k1': 16, 'hier.k2': 1},
          # Two levels (the reproduction's hier_s4_k4x4).
          'two_levels': {'hier.levels': TWO_LEVELS},
          # A third level inside: pairs average every 2 steps. The same
          # traffic between nodes (every 16 steps) as two_levels.
          'three_levels': {'hier.levels': ((2, 2), (4, 4), (8, 16))},
          # Post-local SGD: synchronous SGD for the first half epoch.
          'warmup': {'hier.levels': TWO_LEVELS,
                     'hier.sync_warmup_steps': 98},
          # AdaComm: base periods (1, 4) times a multiplier that starts at
          # 4 (= two_levels) and shrinks with sqrt(loss / first loss).
          'adaptive': {'hier.levels': ((4, 1), (8, 4)),
                       'hier.period_schedule': 'adaptive',
                       'hier.adaptive_base': 4, 'hier.adaptive_min': 1,
                       'hier.adaptive_max': 4},
      },
      grid={'seed': [0, 1, 2]},
      clusters={
          '100Gbps': nodes(Link(latency_s=15e-6, bytes_per_s=12.5e9)),
          '1Gbps': nodes(Link(latency_s=50e-6, bytes_per_s=125e6)),
          '100Mbps': nodes(Link(latency_s=1e-3, bytes_per_s=12.5e6)),
      },
      accuracy_targets=(0.60, 0.63),
  )
