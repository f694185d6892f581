"""cnn_small: the benchmark CNN (three conv/pool stages and two dense layers)."""

import flax.linen as nn


class CNNSmall(nn.Module):
  """conv3x3 32/64/128, each ReLU + maxpool 2; dense 256 + ReLU; dense out."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x_NxHxWxC, train: bool = False):
    del train  # No BatchNorm or dropout.
    x = x_NxHxWxC
    for features in (32, 64, 128):
      x = nn.Conv(features, (3, 3), padding='SAME')(x)
      x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(256)(x))
    return nn.Dense(self.num_classes)(x)
