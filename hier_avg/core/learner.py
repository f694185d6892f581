"""One learner's computation: loss, gradients, optimizer update, prediction.

Everything here acts on a single model replica; the engine maps it over the
learners of a device block, and the reference implementation in the tests
loops over it in plain Python.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hier_avg.data import augment as augment_lib
from hier_avg.core import policies
from hier_avg.models.layers import BN_MOMENTUM


@dataclasses.dataclass(frozen=True, eq=False)
class Learner:
  model: nn.Module
  tx: optax.GradientTransformation
  mean: np.ndarray  # Per-channel normalization of [0, 1] pixels.
  std: np.ndarray
  augment: bool

  def init(self, key, image_shape) -> tuple[Any, Any, Any]:
    """(params, batch_stats, opt_state) of a fresh replica."""
    dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    variables = self.model.init(key, dummy, train=False)
    params = variables['params']
    batch_stats = variables.get('batch_stats', {})
    return params, batch_stats, self.tx.init(params)

  def loss_and_grads(self, params, batch_stats, key, images_BxHxWxC,
                     labels_B):
    """Mean cross-entropy on one minibatch, new BatchNorm stats, gradients."""
    x = augment_lib.preprocess(images_BxHxWxC, key, self.mean, self.std,
                               self.augment)

    def loss_fn(params):
      logits, updates = self.model.apply(
          {'params': params, 'batch_stats': batch_stats}, x, train=True,
          mutable=['batch_stats'])
      # The loss in float32 whatever the compute dtype (mixed precision).
      loss = optax.softmax_cross_entropy_with_integer_labels(
          logits.astype(jnp.float32), labels_B).mean()
      return loss, updates.get('batch_stats', {})

    (loss, new_batch_stats), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    return loss, new_batch_stats, grads

  def apply_gradients(self, params, opt_state, grads):
    updates, opt_state = self.tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def step(self, params, batch_stats, opt_state, key, images, labels):
    """One local SGD step: returns (params, batch_stats, opt_state, loss)."""
    loss, batch_stats, grads = self.loss_and_grads(
        params, batch_stats, key, images, labels)
    params, opt_state = self.apply_gradients(params, opt_state, grads)
    return params, batch_stats, opt_state, loss

  def batch_statistics(self, params, batch_stats, images_BxHxWxC):
    """BatchNorm statistics of one (unaugmented) batch, for recomputing."""
    x = augment_lib.normalize(images_BxHxWxC, self.mean, self.std)
    return policies.batch_statistics(self.model, BN_MOMENTUM, params,
                                     batch_stats, x)

  def logits(self, params, batch_stats, images_BxHxWxC):
    x = augment_lib.normalize(images_BxHxWxC, self.mean, self.std)
    return self.model.apply({'params': params, 'batch_stats': batch_stats},
                            x, train=False)


def step_key(learner_key, step):
  """The randomness (augmentation) of one learner at one step."""
  return jax.random.fold_in(learner_key, step)
