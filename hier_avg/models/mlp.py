"""mlp: a one-hidden-layer perceptron (small problems and fast tests)."""

import flax.linen as nn

from hier_avg.models.layers import DEFAULT_LAYERS
from hier_avg.models.layers import Layers


class MLP(nn.Module):
  num_classes: int = 10
  hidden: int = 128
  layers: Layers = DEFAULT_LAYERS  # Compute dtype (no convolutions).

  @nn.compact
  def __call__(self, x_NxHxWxC, train: bool = False):
    del train
    x = x_NxHxWxC.reshape((x_NxHxWxC.shape[0], -1))
    x = nn.relu(self.layers.dense(self.hidden)(x))
    return self.layers.dense(self.num_classes)(x)
