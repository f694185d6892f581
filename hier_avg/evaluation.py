"""Test-set evaluation of one (averaged) model, batch sharded over devices."""

import math

import jax
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
