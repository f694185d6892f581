"""Shared by the benchmark scripts: fake CPU devices, engines, timing.

Import this module before anything that imports jax: it sets the number of
fake CPU devices (8, or $HIER_AVG_BENCH_DEVICES) for the whole process.
"""

import dataclasses
import os
import sys
import time

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count='
    + os.environ.get('HIER_AVG_BENCH_DEVICES', '8'))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec
import numpy as np
import optax

from hier_avg import builder
from hier_avg.data import datasets, sampling


def machine() -> str:
  import platform
  return (f'{platform.processor() or platform.machine()}, '
          f'{os.cpu_count()} cores, jax {jax.__version__}, '
          f'{jax.devices()[0].platform} x {jax.device_count()}')


def make_engine(config, data, mesh=(-1, -1), learner_loop='auto',
                conv='auto', step_loop='auto', dtype='float32'):
  """The engine `train.py` builds for `config` with these layout settings.

  Returns (engine, sampler, the convolution kernel that was chosen).
  """
  config = config.copy_and_resolve_references()
  config.mesh.node_devices, config.mesh.local_devices = mesh
  config.runtime.learner_loop = learner_loop
  config.runtime.step_loop = step_loop
  config.model.conv, config.model.dtype = conv, dtype
  hier = config.hier
  topology = builder.build_topology(config)
  sampler = sampling.Sampler(len(data.train_images), hier.num_learners,
                             config.data.batch_size, 'partition', 0)
  engine, _ = builder.build_engine(config, data, topology, 10_000,
                                 sampler.steps_per_epoch)
  return engine, sampler, engine.learner.model.layers.conv_name


@dataclasses.dataclass(frozen=True)
class Timing:
  """Steady-state speed and what the first call of each program cost more.

  `compile_s` maps each compiled program (a round: 'level x length', or
  'step') to its first call's time less the steady time of the same work:
  tracing, lowering and compiling.
  """
  images_per_s: float
  compile_s: dict[str, float]


def engine_timing(engine, sampler, data, steps: int, warmup: int,
                  per_step: bool = False) -> Timing:
  """Training speed over `steps` steps after `warmup` (compilation).

  Rounds are cut as `train.py` cuts them. The warm-up must contain every
  distinct round (a whole period of the outermost level does) and the timed
  steps no new one. The timed steps are dispatched as a run dispatches them.
  """
  state = engine.init_state(0, data.image_shape)
  topology = engine.topology
  images, labels = topology.put_replicated(data.train_images,
                                           data.train_labels)
  cut = (1,) if per_step else (
      engine.schedule.fit_cap(engine.max_round_length),)
  first_calls = []  # (program, seconds, steps) of each first call.

  def run(first, last, time_first_calls):
    nonlocal state
    for r in engine.schedule.rounds(first, last, cut):
      known = set(engine.compiled_rounds)
      start = time.perf_counter()
      state, _ = engine.run_round(state, r, (
          images, labels,
          topology.put_round_indices(sampler, r.first, r.length)))
      if time_first_calls:
        # Waiting for every warm-up round times a first call alone.
        jax.block_until_ready(state)
        if set(engine.compiled_rounds) != known:
          level = 'no averaging' if r.level is None else r.level.name
          first_calls.append((f'{level} x{r.length}',
                              time.perf_counter() - start, r.length))
    jax.block_until_ready(state)

  run(0, warmup, True)
  compiled = len(engine.compiled_rounds)
  start = time.perf_counter()
  run(warmup, warmup + steps, False)
  seconds = time.perf_counter() - start
  if len(engine.compiled_rounds) != compiled:
    raise ValueError(f'the timed steps {warmup}..{warmup + steps} compiled '
                     'a round the warm-up did not: time whole averaging '
                     'periods')
  step_s = seconds / steps
  per_step_images = engine.topology.num_learners * sampler.batch_size
  return Timing(steps * per_step_images / seconds,
                {name: first - length * step_s
                 for name, first, length in first_calls})


def engine_images_per_s(engine, sampler, data, steps: int, warmup: int,
                        per_step: bool = False) -> float:
  """Training images/s over `steps` steps after `warmup` (compilation)."""
  return engine_timing(engine, sampler, data, steps, warmup,
                       per_step).images_per_s


def hand_written_timing(learner, data, batch: int, steps: int, warmup: int,
                        devices=None) -> Timing:
  """A minimal hand-written `jax.jit` train step of one model, no framework.

  `learner`'s model and optimizer on `batch` images (no augmentation),
  BatchNorm statistics updated as in training, the loss in float32. With
  several `devices` it is classic GSPMD data parallelism: the model
  replicated, the batch sharded, XLA inserting the gradient all-reduce.
  """
  devices = list(devices or jax.devices())
  mesh = jax.make_mesh((len(devices),), ('data',), devices=devices,
                       axis_types=(AxisType.Auto,))
  replicated = NamedSharding(mesh, PartitionSpec())
  sharded = NamedSharding(mesh, PartitionSpec('data'))
  params, batch_stats, opt_state = jax.device_put(
      learner.init(jax.random.key(0), data.image_shape), replicated)
  images = jax.device_put(data.train_images[:batch], sharded)
  labels = jax.device_put(data.train_labels[:batch], sharded)

  def step(params, batch_stats, opt_state, images, labels):
    def loss_fn(params):
      x = images.astype(jnp.float32) / 255.0
      x = (x - learner.mean) / learner.std
      logits, updates = learner.model.apply(
          {'params': params, 'batch_stats': batch_stats}, x, train=True,
          mutable=['batch_stats'])
      loss = optax.softmax_cross_entropy_with_integer_labels(
          logits.astype(jnp.float32), labels).mean()
      return loss, updates.get('batch_stats', {})
    (loss, batch_stats), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    updates, opt_state = learner.tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state,
            loss)

  step = jax.jit(step, donate_argnums=(0, 1, 2))
  # As the engine: XLA:CPU collectives across fake devices need each step
  # to finish before the next (DESIGN.md's rendezvous deadlock).
  wait_each_step = len(devices) > 1 and devices[0].platform == 'cpu'

  def run(n):
    nonlocal params, batch_stats, opt_state
    for _ in range(n):
      params, batch_stats, opt_state, loss = step(
          params, batch_stats, opt_state, images, labels)
      if wait_each_step:
        jax.block_until_ready(loss)
    jax.block_until_ready((params, loss))

  start = time.perf_counter()
  run(1)
  first = time.perf_counter() - start
  run(max(warmup - 1, 0))
  start = time.perf_counter()
  run(steps)
  seconds = time.perf_counter() - start
  return Timing(steps * batch / seconds, {'step': first - seconds / steps})


def synthetic_cifar(num_train=50_000):
  return datasets.synthetic(num_train, 16, 32, 10)


def fmt(x: float) -> str:
  return f'{x:,.0f}'


__all__ = ['np', 'machine', 'make_engine', 'Timing', 'engine_timing',
           'engine_images_per_s', 'hand_written_timing', 'synthetic_cifar',
           'fmt']
