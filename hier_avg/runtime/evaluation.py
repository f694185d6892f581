"""Test-set evaluation of one (averaged) model, batch sharded over devices,
and the recomputation of its BatchNorm statistics."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from hier_avg.core.policies import AveragingPolicy
from hier_avg.errors import require
from hier_avg.runtime.engine import Engine


def evaluate_batches(engine: Engine, params, batch_stats, batches,
                     global_batch: int, num_examples: int) -> dict[str, float]:
  """Accuracy and mean cross-entropy over `batches`.

  `batches` yields this process's `(images, labels, valid)` rows of each
  global batch of `global_batch` examples (all of it when every process
  holds the same batch); rows with `valid` unset are padding. Every process
  must yield the same number of batches.
  """
  correct, loss_sum = 0, 0.0
  for x, y, valid in batches:
    x, y, valid = (jax.make_array_from_process_local_data(
        engine.topology.batch_sharding, a, (global_batch,) + a.shape[1:])
                   for a in (x, y, valid))
    batch_correct, batch_loss = engine.kernels.eval_sums(
        params, batch_stats, x, y, valid)
    correct += int(batch_correct)
    loss_sum += float(batch_loss)
  return {'test_accuracy': correct / num_examples,
          'test_loss': loss_sum / num_examples}


def global_eval_batch(engine: Engine, batch_size: int,
                      num_examples: int) -> int:
  """`batch_size`, at most the test set, rounded up to the device count.

  A batch larger than the test set would only pad it (and take memory for
  the padding); rounding up gives every device an equal slice.
  """
  devices = engine.topology.num_devices
  return math.ceil(min(batch_size, num_examples) / devices) * devices


def evaluate(engine: Engine, params, batch_stats, images: np.ndarray,
             labels: np.ndarray, batch_size: int) -> dict[str, float]:
  """Accuracy and mean cross-entropy of the model on `(images, labels)`."""
  batch_size = global_eval_batch(engine, batch_size, len(images))

  def batches():
    # Every process holds the whole test set and passes whole batches; the
    # last one is padded by repeating its final example, masked out.
    for start in range(0, len(images), batch_size):
      x = images[start:start + batch_size]
      y = labels[start:start + batch_size]
      n = len(x)
      pad = batch_size - n
      if pad:
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
        y = np.concatenate([y, np.repeat(y[-1:], pad, axis=0)])
      yield x, y, np.arange(batch_size) < n

  return evaluate_batches(engine, params, batch_stats, batches(), batch_size,
                          len(images))


def recompute_calls(engine: Engine, num_batches: int) -> int:
  """Calls of one batch per device that cover `num_batches` batches."""
  return math.ceil(num_batches / engine.topology.num_devices)


def check_recompute(engine: Engine, num_batches: int, batch_size: int,
                    available: int) -> None:
  """Refuses recomputing statistics from more training images than a
  process holds (`available`): checked before the run starts, so that the
  first evaluation does not run out of memory after hours of training."""
  local_devices = len(engine.topology.mesh.local_devices)
  needed = recompute_calls(engine, num_batches) * local_devices * batch_size
  require(needed <= available,
          f'hier.recompute_batches={num_batches} batches of {batch_size} '
          f'need {needed} training examples per process, more than the '
          f'{available} there are; lower hier.recompute_batches.')


def recompute_from_batches(engine: Engine, params, batch_stats, batches,
                           calls: int):
  """Mean BatchNorm statistics over `calls` calls of one batch per device.

  `batches` yields this process's [local devices, B, H, W, C] images.
  """
  if not jax.tree.leaves(batch_stats):
    return batch_stats  # No BatchNorm in the model.
  total = None
  for x in itertools.islice(batches, calls):
    x = jax.make_array_from_process_local_data(
        engine.topology.batch_sharding, x,
        (engine.topology.num_devices,) + x.shape[1:])
    stats = engine.kernels.batch_statistics(params, batch_stats, x)
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
  return jax.tree.map(lambda x: x / calls, total)


def recompute_batch_stats(engine: Engine, params, batch_stats,
                          images: np.ndarray, num_batches: int,
                          batch_size: int, seed: int):
  """BatchNorm statistics of `params`, recomputed on training images.

  The mean of the batch statistics of `num_batches` batches (rounded up to
  a multiple of the device count) of `batch_size` unaugmented images, drawn
  without replacement in a fixed order (from `seed`), so the result is a
  pure function of the model and the data. They must fit in the data set
  (`check_recompute`).
  """
  if not jax.tree.leaves(batch_stats):
    return batch_stats  # No BatchNorm in the model.
  check_recompute(engine, num_batches, batch_size, len(images))
  devices = engine.topology.num_devices
  calls = recompute_calls(engine, num_batches)
  order = np.random.default_rng(seed).permutation(len(images))
  order = order[:calls * devices * batch_size]
  # Every process holds the data set and passes every device's batch.
  batches = (images[chunk].reshape((devices, batch_size) + images.shape[1:])
             for chunk in order.reshape(calls, devices * batch_size))
  return recompute_from_batches(engine, params, batch_stats, batches, calls)


def averaged_model(engine: Engine, feed, state, policy: AveragingPolicy,
                   batch_size: int):
  """`(params, batch_stats)` of the model to evaluate and export.

  The global average of every learner; under `hier.batch_stats=
  'recompute'` its BatchNorm statistics are recomputed from `feed`'s
  training data (`policy.recompute_batches` batches of `batch_size`).
  """
  params, batch_stats = engine.kernels.global_average(state)
  if policy.recomputes_batch_stats:
    batch_stats = feed.recompute_batch_stats(
        params, batch_stats, policy.recompute_batches, batch_size)
  return params, batch_stats
