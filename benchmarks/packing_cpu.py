r"""Train-step throughput of the engine for several device layouts.

  python benchmarks/packing_cpu.py --layouts=2x4,1x2,1x1

cnn_small, P = 8 learners in 2 groups of 4, K1 = K2 = 4, B = 32, synthetic
32x32 data resident on the devices; 16 warm-up steps (compilation), then
`--steps` timed steps, dispatched once per step and once per round (K1
steps in one `lax.scan`). Sets 8 fake CPU devices itself.
"""

import os
import sys

_DEVICES = 8
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           f' --xla_force_host_platform_device_count={_DEVICES}')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import time  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import app
from absl import flags
import jax

from configs import cifar10
from hier_avg import datasets, models, optim, sampling
from hier_avg.engine import Engine
from hier_avg.learner import Learner
from hier_avg.schedule import hier_schedule
from hier_avg.topology import hier_topology

_LAYOUTS = flags.DEFINE_list('layouts', ['2x4', '1x2', '1x1'],
                             'Meshes as node_devices x local_devices.')
_STEPS = flags.DEFINE_integer('steps', 80, 'Timed steps per layout.')
_WARMUP = 16


def images_per_second(config, data, layout: str, per_step: bool) -> float:
  node, local = (int(x) for x in layout.split('x'))
  hier = config.hier
  topology = hier_topology(hier.num_learners, hier.group_size, node, local)
  schedule = hier_schedule(hier.k1, hier.k2)
  sampler = sampling.Sampler(len(data.train_images), hier.num_learners,
                             config.data.batch_size, 'partition', 0)
  tx = optim.make_optimizer(config.opt, optim.learning_rate_schedule(
      config.opt, sampler.steps_per_epoch, 1000))
  learner = Learner(models.get_model(config.model.name, data.num_classes),
                    tx, data.mean, data.std, config.data.augment)
  engine = Engine(learner, topology, schedule, tuple(hier.average))
  state = engine.init_state(0, data.image_shape)
  images, labels = engine.put_train_data(data.train_images, data.train_labels)

  def run(first, last):
    nonlocal state
    for round_ in schedule.rounds(first, last, (1,) if per_step else ()):
      state, _ = engine.train_round(round_.level, round_.length)(
          state, images, labels, engine.put_round_indices(
              sampler, round_.first, round_.length))
      if round_.level is not None:  # XLA:CPU rendezvous: see train.py.
        jax.block_until_ready(state)
    jax.block_until_ready(state)

  run(0, _WARMUP)
  start = time.perf_counter()
  run(_WARMUP, _WARMUP + _STEPS.value)
  seconds = time.perf_counter() - start
  return _STEPS.value * hier.num_learners * config.data.batch_size / seconds


def main(argv):
  del argv
  config = cifar10.get_config('cpu')
  data = datasets.synthetic(50_000, 16, 32, 10)
  print('| mesh | learners/device | dispatch | images/s |')
  print('|---|---|---|---|')
  for layout in _LAYOUTS.value:
    node, local = (int(x) for x in layout.split('x'))
    for per_step in (True, False):
      rate = images_per_second(config, data, layout, per_step)
      print(f'| {layout} | {8 // (node * local)} | '
            f'{"per step" if per_step else "per round"} | {rate:,.0f} |',
            flush=True)


if __name__ == '__main__':
  app.run(main)
