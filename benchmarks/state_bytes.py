r"""What the training state takes on one device, part by part.

  python benchmarks/state_bytes.py [--model=resnet18]

P = 8 learners packed on one device (the `:cpu` preset's groups of 4,
K1 = 4, K2 = 4), CIFAR-10 shapes. Rows add, on the global level, a
Nesterov outer optimizer, int8 compression with error feedback, and a
delay of one step; the columns are what each part of the state takes
(`Engine.state_bytes_by_part`, shapes only: nothing is allocated). What
a group's learners hold alike (the outer state, the anchors, residuals
and a late event's mean) counts once per group on the device
(`core/state.py:Shared`), the rest once per learner.
"""

import common  # pylint: disable=unused-import  # Sets the fake devices.

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-order
from absl import flags

from configs import cifar10

_MODEL = flags.DEFINE_string('model', 'resnet18', 'model.name')

ROWS = (
    ('plain Hier-AVG', {}),
    ('+ Nesterov outer', dict(outer_lr=0.7, outer_momentum=0.9,
                              outer_nesterov=True)),
    ('+ int8 + error feedback', dict(compress=('none', 'int8'),
                                     error_feedback=(False, True))),
    ('+ delay 1', dict(delay=(0, 1))),
)
PARTS = ('params', 'batch_stats', 'opt_state', 'outer', 'comm/anchor',
         'comm/residual', 'comm/inflight')


def main(_):
  data = common.synthetic_cifar(512)
  config = cifar10.get_config('cpu')
  config.model.name = _MODEL.value
  print(f'{_MODEL.value}, P = {config.hier.num_learners} learners on one '
        f'device; MB per device ({common.machine()})\n')
  print('| state | ' + ' | '.join(PARTS) + ' | total |')
  print('|---' * (len(PARTS) + 2) + '|')
  options = {}
  for label, more in ROWS:
    options.update(more)
    config.hier.update(**options)
    engine, _, _ = common.make_engine(config, data, (1, 1))
    found = engine.state_bytes_by_part(data.image_shape)
    cells = [f'{found[p] / 2**20:.1f}' if p in found else '-' for p in PARTS]
    print(f'| {label} | ' + ' | '.join(cells) +
          f' | {sum(found.values()) / 2**20:.1f} |')


if __name__ == '__main__':
  app.run(main)
