r"""One dispatch per round against one dispatch per step.

  python benchmarks/dispatch.py [--steps=48]

The `:cpu` preset (cnn_small, P = 8 in 2 groups of 4, K1 = K2 = 4, B = 32)
trained by the engine, with each round (K1 = 4 steps + averaging) compiled
as one call, and with every step its own call; for one learner per fake
device (2x4) and for all 8 learners packed on one device (1x1).
"""

import common  # pylint: disable=unused-import  # Sets the fake devices.

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-order
from absl import flags

from configs import cifar10

_STEPS = flags.DEFINE_integer('steps', 48, 'Timed steps per row.')
_WARMUP = 16


def main(argv):
  del argv
  config = cifar10.get_config('cpu')
  data = common.synthetic_cifar()
  print(f'cnn_small, P = 8, K1 = K2 = 4, B = 32; {common.machine()}\n')
  rows = []
  for mesh in ((2, 4), (1, 1)):
    engine, sampler, _ = common.make_engine(config, data, mesh)
    rates = [common.engine_images_per_s(engine, sampler, data, _STEPS.value,
                                        _WARMUP, per_step)
             for per_step in (True, False)]
    rows.append((mesh, engine, rates))
    print(mesh, rates, flush=True)
  print('\n| mesh | learners/device | round loop | per step images/s | '
        'per round images/s | per round / per step |')
  print('|---|---|---|---|---|---|')
  for mesh, engine, (step, round_) in rows:
    print(f'| {mesh[0]}x{mesh[1]} | {engine.topology.learners_per_device} | '
          f'{engine.execution.step_loop} | {common.fmt(step)} | {common.fmt(round_)} '
          f'| {round_ / step:.2f}x |')


if __name__ == '__main__':
  app.run(main)
