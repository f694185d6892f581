r"""Per-step time of cheaper communication on a large cluster (cost model).

  python benchmarks/streaming_table.py
  python benchmarks/streaming_table.py --inter_gbps=25 --step_s=0.2

ResNet-50 (25,557,032 float32 parameters) on 32 nodes x 8 GPUs (P = 256,
one learner per GPU), NVLink inside a node and a stated network between
nodes. Rows: synchronous SGD, K-AVG, Hier-AVG with a node-level average
every K1 steps and a global one every K1 K2, then Hier-AVG's global level
in bfloat16, int8 or int4, late by tau steps (`hier.delay`), in F fragments
(`hier.fragments`), and all three; then, for each F, the smallest tau that
hides the global level's communication behind compute. The model: ring
all-reduces tier by tier; a compressed level reduces in float32 inside
each node and exchanges one compressed payload per node between them; a
late event exposes only what exceeds tau x step_s
(`hier_avg/tools/cost_model.py`). One table per inter-node bandwidth.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags

from hier_avg.tools.cost_model import (Cluster, Link, hides, kavg, levels,
                                       predict, step_table, sync)

RESNET50_FP32_BYTES = 25_557_032 * 4

_NODES = flags.DEFINE_integer('nodes', 32, 'Nodes.')
_GPUS = flags.DEFINE_integer('gpus_per_node', 8, 'GPUs (learners) per node.')
_INTER_GBPS = flags.DEFINE_list(
    'inter_gbps', ['100', '25', '10'], 'Node-to-node bandwidth per node, Gb/s: '
    'one table each.')
_INTER_LATENCY_S = flags.DEFINE_float('inter_latency_s', 15e-6,
                                      'Node-to-node alpha.')
_INTRA_BYTES_PER_S = flags.DEFINE_float('intra_bytes_per_s', 300e9,
                                        'NVLink beta per GPU.')
_INTRA_LATENCY_S = flags.DEFINE_float('intra_latency_s', 5e-6, 'NVLink alpha.')
_STEP_S = flags.DEFINE_float(
    'step_s', 0.1, 'Compute seconds per local step (ResNet-50, 224x224, '
    'B=256 per GPU in mixed precision: about 2,500 images/s per '
    'A100-class GPU).')
_K1 = flags.DEFINE_integer('k1', 4, 'Node-level period.')
_K2 = flags.DEFINE_integer('k2', 8, 'Node averagings per global one.')
_TAU = flags.DEFINE_integer('tau', 3, 'Delay of the global level, steps '
                            '(below K1).')
_FRAGMENTS = flags.DEFINE_list('fragments', ['1', '2', '4', '8'],
                               'Fragment counts F for the global level.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  d, k1, k2, tau = _GPUS.value, _K1.value, _K2.value, _TAU.value
  p, period, step_s = _NODES.value * d, k1 * k2, _STEP_S.value
  pairs = ((d, k1), (None, period))

  def hier(label, compress=(), delay=(), fragments=()):
    return levels(label, pairs, compress=compress, delay=delay,
                  fragments=fragments)

  fs = [int(f) for f in _FRAGMENTS.value]
  rows = [sync(), kavg(period),
          hier(f'Hier-AVG S={d} K1={k1} K2={k2}'),
          hier('+ bf16 (global)', compress=('none', 'bfloat16')),
          hier('+ int8 (global)', compress=('none', 'int8')),
          hier('+ int4 (global)', compress=('none', 'int4')),
          hier(f'+ delay {tau} (global)', delay=(0, tau)),
          hier(f'+ {max(fs)} fragments (global)', fragments=(1, max(fs))),
          hier(f'+ bf16 + delay {tau} + {max(fs)} fragments',
               compress=('none', 'bfloat16'), delay=(0, tau),
               fragments=(1, max(fs)))]
  for gbps in _INTER_GBPS.value:
    cluster = Cluster(Link(_INTRA_LATENCY_S.value, _INTRA_BYTES_PER_S.value),
                      Link(_INTER_LATENCY_S.value, float(gbps) * 1e9 / 8), d)
    hiding = []
    for f in fs:
      # The smallest tau (< K1) that hides the global level entirely.
      tau_f = next((t for t in range(k1) if _global_hidden(
          cluster, p, hier('', delay=(0, t), fragments=(1, f)), period,
          step_s)), None)
      if tau_f is not None:
        hiding.append(hier(f'F={f}: smallest tau hiding it, {tau_f}',
                           delay=(0, tau_f), fragments=(1, f)))
      else:
        hiding.append(hier(f'F={f}: not hidden by any tau < K1={k1} '
                           f'(tau {k1 - 1} shown)', delay=(0, k1 - 1),
                           fragments=(1, f)))
    print(f'\nResNet-50 fp32 ({RESNET50_FP32_BYTES / 1e6:.1f} MB), '
          f'{_NODES.value} nodes x {d} GPUs, {gbps} Gb/s between nodes, '
          f'step {step_s * 1e3:g} ms of compute; per level: node, global\n')
    print(step_table(cluster, p, rows + hiding, RESNET50_FP32_BYTES, step_s,
                     period))


def _global_hidden(cluster, p, algorithm, steps, step_s) -> bool:
  return hides(predict(cluster, algorithm, p, steps, RESNET50_FP32_BYTES,
                       step_s).level('global'))


if __name__ == '__main__':
  app.run(main)
