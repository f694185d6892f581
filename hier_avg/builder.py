"""From a config to an engine: model, optimizer, learner, algorithm, runtime.

The one builder the train loop, the benchmarks and the notebooks share, so
a benchmark measures exactly what a run trains.
"""

import dataclasses

from absl import logging
import jax
import optax

from hier_avg import algorithms, models
from hier_avg.core import fragments, membership, optim
from hier_avg.core.hierarchy import Hierarchy
from hier_avg.core.learner import Learner
from hier_avg.core.topology import Topology
from hier_avg.data import feeds
from hier_avg.errors import UserError
from hier_avg.models import im2col
from hier_avg.runtime import execution, memory
from hier_avg.runtime.engine import Engine


def _check_model_takes(learner: Learner, image_shape, name: str):
  """Traces the model on the data's image shape: nothing is computed.

  A network whose pooling or strides leave nothing of a small image fails
  here, with one line, not after the workdir was written. Returns the
  shapes of one learner's parameters.
  """
  try:
    return jax.eval_shape(lambda key: learner.init(key, image_shape),
                          jax.random.key(0))[0]
  except (ZeroDivisionError, ValueError, TypeError):
    raise UserError(
        f'model.name={name!r} cannot take images of shape {image_shape}: its '
        'strides and pooling leave nothing of them; use larger images '
        '(data.image_size, data.synthetic_image_size) or a model made for '
        'this size.') from None


def _list_fragments(params, counts, model_name: str) -> None:
  """Logs each fragmented level's fragments (`hier.fragments`); refuses
  more fragments than the model has parameter leaves."""
  leaves = len(jax.tree.leaves(params))
  for i, count in enumerate(counts):
    if count <= 1:
      continue
    if count > leaves:
      raise UserError(
          f'hier.fragments={tuple(counts)}: level {i} asks for {count} '
          f'fragments but model.name={model_name!r} has {leaves} parameter '
          f'arrays, the smallest unit a fragment holds; give it at most '
          f'{leaves}.')
    for line in fragments.describe(params, count):
      logging.info('hier_avg: level %d %s', i, line)


def _im2col_patch_bytes(config, data, topology: Topology) -> int:
  """im2col's patches for one training step of a device's learners."""
  model = models.get_model(config.model.name, data.num_classes,
                           models.make_layers('xla', config.model.dtype),
                           config.model.stem)
  images = jax.ShapeDtypeStruct(
      (config.data.batch_size,) + tuple(data.image_shape), jax.numpy.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  forward = lambda v, x: model.apply(v, x, train=True,
                                     mutable=['batch_stats'])
  return topology.learners_per_device * im2col.patch_bytes(
      forward, variables, images)


def build_topology(config, devices=None) -> Topology:
  """The learner grid of `config.hier`'s levels on the devices, as
  `config.mesh` asks."""
  return Hierarchy.from_config(config.hier).topology(
      config.mesh.node_devices, config.mesh.local_devices, devices)


def build_engine(config, data, topology: Topology, num_steps: int,
                 steps_per_epoch: int) -> tuple[Engine, optax.Schedule]:
  """The engine that trains `config` on `data`, and its learning rate.

  `data` gives the classes, the image normalization (`mean`, `std`); the
  learning-rate schedule is in local steps (`num_steps` in all).
  """
  lr_schedule = optim.learning_rate_schedule(config.opt, steps_per_epoch,
                                             num_steps)
  updates = algorithms.updates_per_step(config.hier, topology.num_learners)
  tx = optim.make_optimizer(config.opt,
                            lambda count: lr_schedule(count // updates))
  run = execution.Execution.resolve(
      config.runtime.learner_loop, config.runtime.step_loop,
      config.runtime.max_unrolled_steps, topology.platform)
  conv = execution.resolve_conv(
      config.model.conv, run.learner_loop, topology.learners_per_device,
      lambda: _im2col_patch_bytes(config, data, topology),
      lambda: memory.device_memory_bytes(topology.mesh.local_devices))
  model = models.get_model(config.model.name, data.num_classes,
                           models.make_layers(conv, config.model.dtype),
                           config.model.stem)
  # Streamed images come augmented from the host (`data/streaming.py`).
  augment_on_device = config.data.augment and not feeds.is_streamed(
      config.data)
  learner = Learner(model, tx, data.mean, data.std, augment_on_device)
  params = _check_model_takes(learner, data.image_shape, config.model.name)
  _list_fragments(params, config.hier.fragments, config.model.name)
  members = membership.from_config(config.faults, config.hier, num_steps)
  if members is not None:
    logging.info('hier_avg: simulated outages (learner, first step, last '
                 'step), given and drawn: %s', [
                     dataclasses.astuple(o) for o in members.outages])
  algorithm = algorithms.from_config(
      config.hier, learner, topology, run.learner_loop, num_steps,
      steps_per_epoch, members)
  logging.info('hier_avg: learners %s-packed, %s convolutions, %s rounds, '
               '%s compute', run.learner_loop, conv, run.step_loop,
               config.model.dtype)
  return Engine(learner, topology, algorithm, run), lr_schedule
