r"""Prints the alpha-beta model's per-epoch table (`hier_avg.tools.cost_model`).

  python benchmarks/cost_table.py
  python benchmarks/cost_table.py --learners=8,128,1024 --k1=4 --k2=8

Defaults: ResNet-18 fp32 on GPUs with 4 per node (NVLink inside a node,
100 Gb/s between nodes); P = 128 is the papers' 32 nodes x 4 GPUs.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags

from hier_avg.tools.cost_model import (Cluster, Link, RESNET18_FP32_BYTES,
                                 epoch_table, hier, kavg, sync)

_LEARNERS = flags.DEFINE_list(
    'learners', ['8', '16', '32', '64', '128', '256', '512', '1024'],
    'P values; 128 with 4 devices per node is the papers\' 32 nodes x 4 GPUs.')
_GROUP_SIZE = flags.DEFINE_integer('group_size', 4, 'Hier-AVG S.')
_K1 = flags.DEFINE_integer('k1', 4, 'Hier-AVG K1; K-AVG rows use K1, K1*K2.')
_K2 = flags.DEFINE_integer('k2', 4, 'Hier-AVG K2.')
_MODEL_BYTES = flags.DEFINE_float(
    'model_bytes', RESNET18_FP32_BYTES,
    'Averaged bytes per learner (default: ResNet-18, fp32).')
_STEP_S = flags.DEFINE_float('step_s', 0.03, 'Compute seconds per local step '
                             '(ResNet-18, B=128, 32x32, one V100-class GPU).')
_DEVICES_PER_NODE = flags.DEFINE_integer('devices_per_node', 4, 'GPUs/node.')
_INTRA_LATENCY_S = flags.DEFINE_float('intra_latency_s', 5e-6, 'NVLink alpha.')
_INTRA_BYTES_PER_S = flags.DEFINE_float('intra_bytes_per_s', 150e9,
                                        'NVLink beta per device.')
_INTER_LATENCY_S = flags.DEFINE_float('inter_latency_s', 15e-6,
                                      'Network alpha.')
_INTER_BYTES_PER_S = flags.DEFINE_float('inter_bytes_per_s', 12.5e9,
                                        'Network beta per node (100 Gb/s).')
_NUM_EXAMPLES = flags.DEFINE_integer('num_examples', 50_000, 'CIFAR-10 train.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 128, 'B, per learner.')
_EPOCHS = flags.DEFINE_integer('epochs', 200, 'Run length the per-epoch '
                               'figures are averaged over.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cluster = Cluster(Link(_INTRA_LATENCY_S.value, _INTRA_BYTES_PER_S.value),
                    Link(_INTER_LATENCY_S.value, _INTER_BYTES_PER_S.value),
                    _DEVICES_PER_NODE.value)
  k1, k2 = _K1.value, _K2.value
  algorithms = [sync(), kavg(k1), kavg(k1 * k2),
                hier(_GROUP_SIZE.value, k1, k2)]
  print(epoch_table(cluster, [int(p) for p in _LEARNERS.value], algorithms,
                    _MODEL_BYTES.value, _STEP_S.value, _NUM_EXAMPLES.value,
                    _BATCH_SIZE.value, _EPOCHS.value))


if __name__ == '__main__':
  app.run(main)
