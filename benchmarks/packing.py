r"""Packed learners against one model with the same total batch.

  python benchmarks/packing.py [--model=cnn_small] [--steps=48]

P = 8 learners x B = 32 (K1 = K2 = 4, the `:cpu` preset) against one model
at batch 256 (a plain `jax.jit` of one learner's step, no framework), on the
same machine in the same run. Rows: the one-model baseline with XLA's and
with im2col convolutions; the 8 learners packed on one device in every
(runtime.learner_loop, model.conv) combination; and one learner per fake device (2x4).
Synthetic 32x32 data resident on the devices; the timed steps follow
warm-up rounds (compilation).
"""

import common  # pylint: disable=unused-import  # Sets the fake devices.

import time  # pylint: disable=g-import-not-at-top,wrong-import-order

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from configs import cifar10

_MODEL = flags.DEFINE_string('model', 'cnn_small', 'model.name')
_STEPS = flags.DEFINE_integer('steps', 48, 'Timed steps per row.')
_DTYPE = flags.DEFINE_string('dtype', 'float32', 'model.dtype')
_WARMUP = 16


def one_model_images_per_s(config, data, conv: str) -> float:
  """One model, batch P*B, one jit-compiled step per call, on one device."""
  engine, _, _ = common.make_engine(
      config, data, (1, 1), learner_loop='vmap', conv=conv, dtype=_DTYPE.value)
  learner = engine.learner
  batch = config.hier.num_learners * config.data.batch_size
  params, batch_stats, opt_state = learner.init(jax.random.key(0),
                                                data.image_shape)
  images = jnp.asarray(data.train_images[:batch])
  labels = jnp.asarray(data.train_labels[:batch])
  key = jax.random.key(1)
  step = jax.jit(learner.step, donate_argnums=(0, 1, 2))

  def run(n):
    nonlocal params, batch_stats, opt_state
    for _ in range(n):
      params, batch_stats, opt_state, loss = step(
          params, batch_stats, opt_state, key, images, labels)
    jax.block_until_ready(loss)

  run(3)
  start = time.perf_counter()
  run(_STEPS.value)
  return _STEPS.value * batch / (time.perf_counter() - start)


def main(argv):
  del argv
  config = cifar10.get_config('cpu')
  config.model.name = _MODEL.value
  data = common.synthetic_cifar()
  print(f'{_MODEL.value}, {_DTYPE.value}, P = 8 x B = 32 vs one model at '
        f'B = 256; {common.machine()}\n')
  rows = []
  for conv in ('xla', 'im2col'):
    rows.append(('one model, batch 256', '-', conv,
                 one_model_images_per_s(config, data, conv)))
    print(rows[-1], flush=True)
  layouts = [((1, 1), pack, conv) for pack in ('vmap', 'unroll')
             for conv in ('xla', 'im2col')] + [((2, 4), 'auto', 'auto')]
  for mesh, pack, conv in layouts:
    engine, sampler, conv = common.make_engine(
        config, data, mesh, pack, conv, dtype=_DTYPE.value)
    rate = common.engine_images_per_s(engine, sampler, data, _STEPS.value,
                                      _WARMUP)
    where = (f'{engine.topology.learners_per_device} learners on 1 device'
             if mesh == (1, 1) else '1 learner per device, 2x4 devices')
    rows.append((where, engine.execution.learner_loop, conv, rate))
    print(rows[-1], flush=True)
  best = max(r[3] for r in rows[:2])
  print('\n| layout | runtime.learner_loop | model.conv | images/s | vs best one model |')
  print('|---|---|---|---|---|')
  for where, pack, conv, rate in rows:
    print(f'| {where} | {pack} | {conv} | {common.fmt(rate)} | '
          f'{rate / best:.2f}x |')


if __name__ == '__main__':
  app.run(main)
