"""GoogLeNet for 32x32 images (kuangliu/pytorch-cifar's CIFAR variant).

Szegedy et al. (2015) Inception-v1 modules with the paper's widths (3a-5b),
as kuangliu adapts them to CIFAR: a single 3x3 conv (192 channels) replaces
the ImageNet stem, every convolution (with bias) is followed by BatchNorm and
ReLU, the "5x5" branch is two stacked 3x3 convolutions, there are no
auxiliary classifiers and no dropout; 3x3 stride-2 max-pools after 3b and 4e
(32 -> 16 -> 8 pixels), global average pool, one Dense layer.
"""

import functools

import flax.linen as nn
import jax.numpy as jnp

from hier_avg.models.layers import DEFAULT_LAYERS
from hier_avg.models.layers import Layers

# Per module (3a, 3b, 4a-4e, 5a, 5b): 1x1, 3x3 reduce, 3x3, 5x5 reduce,
# 5x5 (as two 3x3), pool projection.
INCEPTION_WIDTHS = (
    (64, 96, 128, 16, 32, 32),
    (128, 128, 192, 32, 96, 64),
    (192, 96, 208, 16, 48, 64),
    (160, 112, 224, 24, 64, 64),
    (128, 128, 256, 24, 64, 64),
    (112, 144, 288, 32, 64, 64),
    (256, 160, 320, 32, 128, 128),
    (256, 160, 320, 32, 128, 128),
    (384, 192, 384, 48, 128, 128),
)
# Max-pool (3x3, stride 2) after these modules: 3b and 4e.
POOL_AFTER = (1, 6)


def _max_pool_3x3(x, strides):
  # PyTorch's MaxPool2d(3, stride, padding=1): flax pads with -inf too.
  return nn.max_pool(x, (3, 3), (strides, strides), padding=((1, 1), (1, 1)))


class Inception(nn.Module):
  """Four branches concatenated: 1x1; 1x1-3x3; 1x1-3x3-3x3; pool-1x1."""
  layers: Layers
  n1x1: int
  n3x3_reduce: int
  n3x3: int
  n5x5_reduce: int
  n5x5: int
  pool_features: int

  @nn.compact
  def __call__(self, x, train: bool):
    norm = self.layers.batch_norm(train)
    conv = functools.partial(self.layers.conv, use_bias=True)

    def conv_bn_relu(y, features, size):
      return nn.relu(norm()(conv(features, (size, size), padding='SAME')(y)))

    branch_1x1 = conv_bn_relu(x, self.n1x1, 1)
    branch_3x3 = conv_bn_relu(conv_bn_relu(x, self.n3x3_reduce, 1),
                              self.n3x3, 3)
    branch_5x5 = conv_bn_relu(x, self.n5x5_reduce, 1)
    branch_5x5 = conv_bn_relu(conv_bn_relu(branch_5x5, self.n5x5, 3),
                              self.n5x5, 3)
    branch_pool = conv_bn_relu(_max_pool_3x3(x, 1), self.pool_features, 1)
    return jnp.concatenate([branch_1x1, branch_3x3, branch_5x5, branch_pool],
                           axis=-1)


class GoogLeNet(nn.Module):
  num_classes: int = 10
  layers: Layers = DEFAULT_LAYERS  # Convolution kernel, compute dtype.

  @nn.compact
  def __call__(self, x_NxHxWxC, train: bool = False):
    x = self.layers.conv(192, (3, 3), padding=1, use_bias=True)(x_NxHxWxC)
    x = nn.relu(self.layers.batch_norm(train)()(x))
    for i, widths in enumerate(INCEPTION_WIDTHS):
      x = Inception(self.layers, *widths)(x, train)
      if i in POOL_AFTER:
        x = _max_pool_3x3(x, 2)
    x = x.mean(axis=(1, 2))  # kuangliu's 8x8 average pool over 8x8 features.
    return self.layers.dense(self.num_classes)(x)
