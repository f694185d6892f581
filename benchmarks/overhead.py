r"""The framework's step against a minimal hand-written data-parallel step.

  python benchmarks/overhead.py [--steps=48]

Same model (cnn_small), same total batch (8 x 32), same 8 fake devices:
(a) a hand-written `jax.jit` synchronous data-parallel step -- one model
replicated, the batch sharded over the devices, XLA inserting the gradient
all-reduce -- and (b) hier_avg's synchronous special case (P = 8, K1 = K2 =
1: every step ends with a global average), which also gathers each
minibatch from the resident data set by index. Also (c) Hier-AVG K1 = K2 =
4, the `:cpu` preset, for reference.
"""

import common  # pylint: disable=unused-import  # Sets the fake devices.

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-order
from absl import flags

from configs import cifar10

_STEPS = flags.DEFINE_integer('steps', 48, 'Timed steps per row.')
_WARMUP = 16


def main(argv):
  del argv
  data = common.synthetic_cifar()
  print(f'cnn_small, 8 x 32 images per step; {common.machine()}\n')
  sync = cifar10.get_config('cpu')
  sync.hier.group_size, sync.hier.k1, sync.hier.k2 = 8, 1, 1
  engine, sampler, _ = common.make_engine(sync, data, (1, 8))
  rows = [('hand-written jit data-parallel step',
           common.hand_written_timing(engine.learner, data, 256, _STEPS.value,
                                      _WARMUP).images_per_s)]
  print(rows[-1], flush=True)
  rows.append(('hier_avg synchronous (K1 = K2 = 1)',
               common.engine_images_per_s(engine, sampler, data,
                                          _STEPS.value, _WARMUP)))
  print(rows[-1], flush=True)
  hier = cifar10.get_config('cpu')
  engine, sampler, _ = common.make_engine(hier, data, (2, 4))
  rows.append(('hier_avg Hier-AVG (S = 4, K1 = K2 = 4)',
               common.engine_images_per_s(engine, sampler, data,
                                          _STEPS.value, _WARMUP)))
  print('\n| step | images/s | step time vs hand-written |')
  print('|---|---|---|')
  for name, rate in rows:
    print(f'| {name} | {common.fmt(rate)} | {rows[0][1] / rate:.2f}x |')


if __name__ == '__main__':
  app.run(main)
