"""MobileNetV2 for 32x32 images (kuangliu/pytorch-cifar's CIFAR variant).

Sandler et al. (2018) inverted residual blocks (1x1 expand, 3x3 depthwise,
1x1 linear projection, each with BatchNorm) and the paper's width table, with
kuangliu's changes for CIFAR: stride 1 in the stem and in the second stage
(24 channels), so the features are 32, 32, 16, 8, 8, 4, 4 pixels wide per
stage; ReLU rather than ReLU6; every block has the expand convolution (even
at expansion 1); and a stride-1 block whose width changes adds a projection
shortcut (1x1 conv + BatchNorm) where the paper has no residual.
"""

import flax.linen as nn

from hier_avg.models.layers import DEFAULT_LAYERS
from hier_avg.models.layers import Layers

# (expansion, out channels, blocks, stride of the first block) per stage.
STAGES = ((1, 16, 1, 1),
          (6, 24, 2, 1),  # Stride 2 on ImageNet.
          (6, 32, 3, 2),
          (6, 64, 4, 2),
          (6, 96, 3, 1),
          (6, 160, 3, 2),
          (6, 320, 1, 1))


class InvertedResidual(nn.Module):
  """Expand, depthwise, project; residual only at stride 1."""
  layers: Layers
  features: int
  expansion: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    norm = self.layers.batch_norm(train)
    conv = self.layers.conv
    hidden = self.expansion * x.shape[-1]
    y = nn.relu(norm()(conv(hidden, (1, 1))(x)))
    y = self.layers.depthwise_conv(
        hidden, (3, 3), self.strides, padding=1,
        feature_group_count=hidden)(y)
    y = nn.relu(norm()(y))
    y = norm()(conv(self.features, (1, 1))(y))  # Linear bottleneck: no ReLU.
    if self.strides != 1:
      return y
    if x.shape[-1] != self.features:
      x = norm()(conv(self.features, (1, 1))(x))
    return x + y


class MobileNetV2(nn.Module):
  num_classes: int = 10
  layers: Layers = DEFAULT_LAYERS  # Convolution kernel, compute dtype.

  @nn.compact
  def __call__(self, x_NxHxWxC, train: bool = False):
    norm = self.layers.batch_norm(train)
    conv = self.layers.conv
    x = nn.relu(norm()(conv(32, (3, 3), padding=1)(x_NxHxWxC)))  # Stride 1.
    for expansion, features, num_blocks, first_strides in STAGES:
      for j in range(num_blocks):
        x = InvertedResidual(self.layers, features, expansion,
                             first_strides if j == 0 else 1)(x, train)
    x = nn.relu(norm()(conv(1280, (1, 1))(x)))
    x = x.mean(axis=(1, 2))  # kuangliu's 4x4 average pool over 4x4 features.
    return self.layers.dense(self.num_classes)(x)
