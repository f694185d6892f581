"""Test-set evaluation of one (averaged) model, batch sharded over devices,
and the recomputation of its BatchNorm statistics."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from hier_avg.engine import Engine


def evaluate(engine: Engine, params, batch_stats, images: np.ndarray,
             labels: np.ndarray, batch_size: int) -> dict[str, float]:
  """Accuracy and mean cross-entropy of the model on `(images, labels)`."""
  # Every device gets an equal slice of each batch; the last batch is padded
  # by repeating its final example, and the padding is masked out.
  devices = engine.num_devices
  batch_size = math.ceil(batch_size / devices) * devices
  correct, loss_sum = 0, 0.0
  for start in range(0, len(images), batch_size):
    x = images[start:start + batch_size]
    y = labels[start:start + batch_size]
    n = len(x)
    pad = batch_size - n
    if pad:
      x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
      y = np.concatenate([y, np.repeat(y[-1:], pad, axis=0)])
    valid = np.arange(batch_size) < n
    # Every process holds the whole test set: each places its own slices.
    x, y, valid = jax.device_put((x, y, valid), engine.batch_sharding)
    batch_correct, batch_loss = engine.eval_sums(params, batch_stats, x, y,
                                                 valid)
    correct += int(batch_correct)
    loss_sum += float(batch_loss)
  return {'test_accuracy': correct / len(images),
          'test_loss': loss_sum / len(images)}


def recompute_batch_stats(engine: Engine, params, batch_stats,
                          images: np.ndarray, num_batches: int,
                          batch_size: int, seed: int):
  """BatchNorm statistics of `params`, recomputed on training images.

  The mean of the batch statistics of `num_batches` batches (rounded up to
  a multiple of the device count) of `batch_size` unaugmented images, drawn
  without replacement in a fixed order (from `seed`), so the result is a
  pure function of the model and the data. Batches larger than the data
  set repeat it.
  """
  if not jax.tree.leaves(batch_stats):
    return batch_stats  # No BatchNorm in the model.
  devices = engine.num_devices
  calls = math.ceil(num_batches / devices)
  needed = calls * devices * batch_size
  order = np.random.default_rng(seed).permutation(len(images))
  order = np.resize(order, needed)  # Repeats the data if it is too small.
  total = None
  for call in range(calls):
    chunk = order[call * devices * batch_size:(call + 1) * devices *
                  batch_size]
    x = images[chunk].reshape((devices, batch_size) + images.shape[1:])
    stats = engine.batch_statistics(params, batch_stats,
                                    jax.device_put(x, engine.batch_sharding))
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
  return jax.tree.map(lambda x: x / calls, total)
