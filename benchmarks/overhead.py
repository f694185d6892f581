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

import time  # pylint: disable=g-import-not-at-top,wrong-import-order

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec
import optax

from configs import cifar10

_STEPS = flags.DEFINE_integer('steps', 48, 'Timed steps per row.')
_WARMUP = 16


def hand_written_images_per_s(engine, data, batch: int) -> float:
  learner = engine.learner
  # Classic GSPMD data parallelism: XLA propagates the batch sharding.
  mesh = jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(AxisType.Auto,))
  replicated = NamedSharding(mesh, PartitionSpec())
  sharded = NamedSharding(mesh, PartitionSpec('data'))
  params, batch_stats, opt_state = jax.device_put(
      learner.init(jax.random.key(0), data.image_shape), replicated)
  images = jax.device_put(data.train_images[:batch], sharded)
  labels = jax.device_put(data.train_labels[:batch], sharded)

  def step(params, opt_state, images, labels):
    def loss_fn(params):
      x = images.astype(jnp.float32) / 255.0
      x = (x - learner.mean) / learner.std
      logits = learner.model.apply({'params': params}, x)
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = learner.tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  step = jax.jit(step, donate_argnums=(0, 1))
  del batch_stats  # cnn_small has none.

  def run(n):
    nonlocal params, opt_state
    for _ in range(n):
      params, opt_state, loss = step(params, opt_state, images, labels)
      jax.block_until_ready(loss)  # As the engine: XLA:CPU rendezvous.

  run(_WARMUP)
  start = time.perf_counter()
  run(_STEPS.value)
  return _STEPS.value * batch / (time.perf_counter() - start)


def main(argv):
  del argv
  data = common.synthetic_cifar()
  print(f'cnn_small, 8 x 32 images per step; {common.machine()}\n')
  sync = cifar10.get_config('cpu')
  sync.hier.group_size, sync.hier.k1, sync.hier.k2 = 8, 1, 1
  engine, sampler, _ = common.make_engine(sync, data, (1, 8))
  rows = [('hand-written jit data-parallel step',
           hand_written_images_per_s(engine, data, 256))]
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
