"""cnn_small: the benchmark CNN (three conv/pool stages and two dense layers)."""

import flax.linen as nn

from hier_avg.models.layers import DEFAULT_LAYERS
from hier_avg.models.layers import Layers


def max_pool_2x2(x_NxHxWxC):
  """2x2 max-pool, stride 2 (VALID), as a reshape and a max.

  The same function as `nn.max_pool(x, (2, 2), strides=(2, 2))`, with the
  same gradient except at exact ties inside a window. XLA:CPU runs the
  backward of this form about twice as fast as max_pool's select-and-scatter.
  """
  n, h, w, c = x_NxHxWxC.shape
  x = x_NxHxWxC[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class CNNSmall(nn.Module):
  """conv3x3 32/64/128, each ReLU + maxpool 2; dense 256 + ReLU; dense out."""
  num_classes: int = 10
  layers: Layers = DEFAULT_LAYERS  # Convolution kernel, compute dtype.

  @nn.compact
  def __call__(self, x_NxHxWxC, train: bool = False):
    del train  # No BatchNorm or dropout.
    x = x_NxHxWxC
    for features in (32, 64, 128):
      x = self.layers.conv(features, (3, 3), padding='SAME', use_bias=True)(x)
      x = max_pool_2x2(nn.relu(x))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(self.layers.dense(256)(x))
    return self.layers.dense(self.num_classes)(x)
