"""mlp: a one-hidden-layer perceptron (small problems and fast tests)."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
  num_classes: int = 10
  hidden: int = 128
  conv: str = 'xla'            # No convolutions; accepted like every model.
  dtype: Any = jnp.float32     # Compute dtype; parameters stay float32.

  @nn.compact
  def __call__(self, x_NxHxWxC, train: bool = False):
    del train
    x = x_NxHxWxC.reshape((x_NxHxWxC.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)
