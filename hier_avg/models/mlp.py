"""mlp: a one-hidden-layer perceptron (small problems and fast tests)."""

import flax.linen as nn


class MLP(nn.Module):
  num_classes: int = 10
  hidden: int = 128

  @nn.compact
  def __call__(self, x_NxHxWxC, train: bool = False):
    del train
    x = x_NxHxWxC.reshape((x_NxHxWxC.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden)(x))
    return nn.Dense(self.num_classes)(x)
