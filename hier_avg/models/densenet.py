"""DenseNet-121 for 32x32 images (kuangliu/pytorch-cifar's CIFAR variant).

Huang et al. (2017) DenseNet-BC: dense blocks of 6, 12, 24 and 16
pre-activation bottleneck layers (BN-ReLU-1x1 conv to 4k channels, BN-ReLU-3x3
conv to k = 32), transitions (BN-ReLU-1x1 conv halving the channels, 2x2
average pool) between blocks. kuangliu's CIFAR changes: the stem is one 3x3
conv to 2k = 64 channels with no pooling, so the blocks run at 32, 16, 8 and 4
pixels; then BN-ReLU, global average pool, one Dense layer. No convolution
has a bias.
"""

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from hier_avg.models.layers import DEFAULT_LAYERS
from hier_avg.models.layers import Layers


class DenseLayer(nn.Module):
  """BN-ReLU-1x1 conv (4k), BN-ReLU-3x3 conv (k); its output joins the input."""
  layers: Layers
  growth_rate: int

  @nn.compact
  def __call__(self, x, train: bool):
    norm = self.layers.batch_norm(train)
    conv = self.layers.conv
    y = conv(4 * self.growth_rate, (1, 1))(nn.relu(norm()(x)))
    y = conv(self.growth_rate, (3, 3), padding=1)(nn.relu(norm()(y)))
    # New features first, as kuangliu's torch.cat([out, x]).
    return jnp.concatenate([y, x], axis=-1)


class Transition(nn.Module):
  """BN-ReLU-1x1 conv to `features`, 2x2 average pool."""
  layers: Layers
  features: int

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.relu(self.layers.batch_norm(train)()(x))
    x = self.layers.conv(self.features, (1, 1))(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(nn.Module):
  block_sizes: Sequence[int]
  growth_rate: int = 32
  reduction: float = 0.5       # Channel compression at each transition.
  num_classes: int = 10
  layers: Layers = DEFAULT_LAYERS  # Convolution kernel, compute dtype.

  @nn.compact
  def __call__(self, x_NxHxWxC, train: bool = False):
    x = self.layers.conv(2 * self.growth_rate, (3, 3), padding=1)(x_NxHxWxC)
    for i, num_layers in enumerate(self.block_sizes):
      for _ in range(num_layers):
        x = DenseLayer(self.layers, self.growth_rate)(x, train)
      if i < len(self.block_sizes) - 1:
        # int() floors, as kuangliu's int(math.floor(channels * reduction)).
        x = Transition(self.layers,
                       int(x.shape[-1] * self.reduction))(x, train)
    x = nn.relu(self.layers.batch_norm(train)()(x))
    x = x.mean(axis=(1, 2))  # kuangliu's 4x4 average pool over 4x4 features.
    return self.layers.dense(self.num_classes)(x)


DenseNet121 = functools.partial(DenseNet, block_sizes=(6, 12, 24, 16))
