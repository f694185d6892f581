"""ResNet-18/34/50 with a CIFAR stem (default) or the ImageNet stem.

`stem='cifar'`: kuangliu/pytorch-cifar's networks, as many 2018-2019
CIFAR-10 papers train them: He et al. (2016) ResNets with ImageNet widths
(64-512) and a 3x3 stride-1 stem, stages at 32, 16, 8 and 4 pixels for
32x32 images.
`stem='imagenet'`: He et al.'s 7x7 stride-2 convolution and 3x3 stride-2
max-pool, for 224x224 images (stages at 56, 28, 14 and 7 pixels); with
1000 classes ResNet-50 is torchvision's `resnet50` (25,557,032 parameters).
Both: projection shortcuts (1x1 conv + BatchNorm, option B) where the shape
changes, global average pool, one Dense layer.
"""

import functools
from typing import Sequence

import flax.linen as nn

from hier_avg.models.layers import DEFAULT_LAYERS
from hier_avg.models.layers import Layers


class BasicBlock(nn.Module):
  """Two 3x3 convolutions (ResNet-18/34)."""
  layers: Layers
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    norm = self.layers.batch_norm(train)
    conv = self.layers.conv
    y = conv(self.features, (3, 3), self.strides, padding=1)(x)
    y = nn.relu(norm()(y))
    y = conv(self.features, (3, 3), padding=1)(y)
    y = norm()(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      # Projection shortcut when the shape changes (He et al., option B).
      x = conv(self.features, (1, 1), self.strides)(x)
      x = norm()(x)
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (strided), 1x1 expand to 4x `features` (ResNet-50).

  The stride sits on the 3x3 convolution, as in kuangliu's (and torchvision's
  "ResNet v1.5") Bottleneck.
  """
  layers: Layers
  features: int
  strides: int = 1

  expansion = 4  # Output channels per `features`.

  @nn.compact
  def __call__(self, x, train: bool):
    norm = self.layers.batch_norm(train)
    conv = self.layers.conv
    out_features = self.features * self.expansion
    y = nn.relu(norm()(conv(self.features, (1, 1))(x)))
    y = conv(self.features, (3, 3), self.strides, padding=1)(y)
    y = nn.relu(norm()(y))
    y = norm()(conv(out_features, (1, 1))(y))
    if self.strides != 1 or x.shape[-1] != out_features:
      x = norm()(conv(out_features, (1, 1), self.strides)(x))
    return nn.relu(x + y)


STEMS = ('cifar', 'imagenet')


class ResNet(nn.Module):
  stage_sizes: Sequence[int]
  num_classes: int = 10
  layers: Layers = DEFAULT_LAYERS  # Convolution kernel, compute dtype.
  block: type[nn.Module] = BasicBlock  # Or Bottleneck.
  stem: str = 'cifar'          # One of STEMS.

  @nn.compact
  def __call__(self, x_NxHxWxC, train: bool = False):
    conv = self.layers.conv
    if self.stem == 'imagenet':
      x = conv(64, (7, 7), 2, padding=3)(x_NxHxWxC)
    else:
      x = conv(64, (3, 3), padding=1)(x_NxHxWxC)
    x = nn.relu(self.layers.batch_norm(train)()(x))
    if self.stem == 'imagenet':
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = self.block(self.layers, 64 * 2**i, strides)(x, train)
    x = x.mean(axis=(1, 2))
    return self.layers.dense(self.num_classes)(x)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2))
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3))
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                             block=Bottleneck)
