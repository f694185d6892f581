r"""Prints the alpha-beta model's per-epoch table (`hier_avg.tools.cost_model`).

  python benchmarks/cost_table.py
  python benchmarks/cost_table.py --learners=8,128,1024 --k1=4 --k2=8 --k3=4
  python benchmarks/cost_table.py --nodes_per_pod=0   # Two tiers, no pods.

Defaults: ResNet-18 fp32 on a cluster of three tiers: 4 GPUs per node over
NVLink, 8 nodes per pod over 100 Gb/s, pods over a 25 Gb/s datacentre link;
P = 128 is the papers' 32 nodes x 4 GPUs (here 4 pods). Rows: sync SGD,
K-AVG K1 and K1*K2, Hier-AVG (S, K1, K2), and where P spans more than one
pod the three levels ((S, K1), (one pod, K1*K2), (P, K1*K2*K3)).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags

from hier_avg.tools.cost_model import (Cluster, Link, RESNET18_FP32_BYTES,
                                       Tier, TieredCluster, describe_levels,
                                       epoch_table, hier, kavg, levels,
                                       sync)

_LEARNERS = flags.DEFINE_list(
    'learners', ['8', '16', '32', '64', '128', '256', '512', '1024'],
    'P values; 128 with 4 devices per node is the papers\' 32 nodes x 4 GPUs.')
_GROUP_SIZE = flags.DEFINE_integer('group_size', 4, 'Hier-AVG S.')
_K1 = flags.DEFINE_integer('k1', 4, 'Hier-AVG K1; K-AVG rows use K1, K1*K2.')
_K2 = flags.DEFINE_integer('k2', 4, 'Hier-AVG K2.')
_K3 = flags.DEFINE_integer('k3', 4, 'Three-level row: pod averagings '
                           'between global ones (global every K1*K2*K3).')
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
                                      'Node-to-node network alpha.')
_INTER_BYTES_PER_S = flags.DEFINE_float(
    'inter_bytes_per_s', 12.5e9, 'Node-to-node beta per node (100 Gb/s).')
_NODES_PER_POD = flags.DEFINE_integer(
    'nodes_per_pod', 8, 'Nodes per pod, joined by the inter link; pods are '
    'joined by the datacentre link. 0: no pods (two tiers, any number of '
    'nodes on the inter link, no three-level row).')
_DC_LATENCY_S = flags.DEFINE_float('dc_latency_s', 50e-6,
                                   'Datacentre (pod to pod) alpha.')
_DC_BYTES_PER_S = flags.DEFINE_float('dc_bytes_per_s', 3.125e9,
                                     'Datacentre beta per pod (25 Gb/s).')
_NUM_EXAMPLES = flags.DEFINE_integer('num_examples', 50_000, 'CIFAR-10 train.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 128, 'B, per learner.')
_EPOCHS = flags.DEFINE_integer('epochs', 200, 'Run length the per-epoch '
                               'figures are averaged over.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  intra = Link(_INTRA_LATENCY_S.value, _INTRA_BYTES_PER_S.value)
  inter = Link(_INTER_LATENCY_S.value, _INTER_BYTES_PER_S.value)
  d, pod_nodes = _DEVICES_PER_NODE.value, _NODES_PER_POD.value
  s, k1, k2, k3 = _GROUP_SIZE.value, _K1.value, _K2.value, _K3.value
  algorithms = [sync(), kavg(k1), kavg(k1 * k2), hier(s, k1, k2)]
  if pod_nodes:
    cluster = TieredCluster((
        Tier(d, intra, 'node'), Tier(pod_nodes, inter, 'pod'),
        Tier(None, Link(_DC_LATENCY_S.value, _DC_BYTES_PER_S.value))))
    pod = d * pod_nodes

    def three_levels(p):
      # Inside one pod there is no third tier to average over.
      if p <= pod or p % pod:
        return None
      pairs = ((s, k1), (pod, k1 * k2), (None, k1 * k2 * k3))
      return levels(f'Hier-AVG levels {describe_levels(pairs)}', pairs)

    algorithms.append(three_levels)
  else:
    cluster = Cluster(intra, inter, d)
  print(epoch_table(cluster, [int(p) for p in _LEARNERS.value], algorithms,
                    _MODEL_BYTES.value, _STEP_S.value, _NUM_EXAMPLES.value,
                    _BATCH_SIZE.value, _EPOCHS.value))


if __name__ == '__main__':
  app.run(main)
