"""Test-set evaluation of one (averaged) model, batch sharded over devices."""

import math

import numpy as np

from hier_avg.engine import Engine


def evaluate(engine: Engine, params, batch_stats, images: np.ndarray,
             labels: np.ndarray, batch_size: int) -> dict[str, float]:
  """Accuracy and mean cross-entropy of the model on `(images, labels)`."""
  # Every device gets an equal slice of each batch; the last batch is padded
  # by repeating its final example and the padding is dropped again.
  devices = engine.num_devices
  batch_size = math.ceil(batch_size / devices) * devices
  correct, loss_sum = 0, 0.0
  for start in range(0, len(images), batch_size):
    x = images[start:start + batch_size]
    y = labels[start:start + batch_size]
    n = len(x)
    if n < batch_size:
      x = np.concatenate([x, np.repeat(x[-1:], batch_size - n, axis=0)])
    logits = np.asarray(engine.predict(params, batch_stats, x),
                        np.float64)[:n]
    correct += int((logits.argmax(-1) == y).sum())
    logits -= logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    loss_sum += float(-log_probs[np.arange(n), y].sum())
  return {'test_accuracy': correct / len(images),
          'test_loss': loss_sum / len(images)}
