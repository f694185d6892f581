"""Shared by the benchmark scripts: fake CPU devices, engines, timing.

Import this module before anything that imports jax: it sets the number of
fake CPU devices (8, or $HIER_AVG_BENCH_DEVICES) for the whole process.
"""

import os
import sys
import time

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count='
    + os.environ.get('HIER_AVG_BENCH_DEVICES', '8'))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np

from hier_avg import builder
from hier_avg.data import datasets, sampling
from hier_avg.core.topology import hier_topology


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
  topology = hier_topology(hier.num_learners, hier.group_size, *mesh)
  sampler = sampling.Sampler(len(data.train_images), hier.num_learners,
                             config.data.batch_size, 'partition', 0)
  engine, _ = builder.build_engine(config, data, topology, 10_000,
                                 sampler.steps_per_epoch)
  return engine, sampler, engine.learner.model.layers.conv_name


def engine_images_per_s(engine, sampler, data, steps: int, warmup: int,
                        per_step: bool = False) -> float:
  """Training images/s over `steps` steps after `warmup` (compilation)."""
  state = engine.init_state(0, data.image_shape)
  topology = engine.topology
  images, labels = topology.put_replicated(data.train_images,
                                           data.train_labels)
  cut = (1,) if per_step else (engine.max_round_length,)

  def run(first, last):
    nonlocal state
    for r in engine.schedule.rounds(first, last, cut):
      state, _ = engine.run_round(state, r, (
          images, labels,
          topology.put_round_indices(sampler, r.first, r.length)))
    jax.block_until_ready(state)

  run(0, warmup)
  start = time.perf_counter()
  run(warmup, warmup + steps)
  seconds = time.perf_counter() - start
  per_step_images = engine.topology.num_learners * sampler.batch_size
  return steps * per_step_images / seconds


def synthetic_cifar(num_train=50_000):
  return datasets.synthetic(num_train, 16, 32, 10)


def fmt(x: float) -> str:
  return f'{x:,.0f}'


__all__ = ['np', 'machine', 'make_engine', 'engine_images_per_s',
           'synthetic_cifar', 'fmt']
