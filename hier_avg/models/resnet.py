"""ResNets for 32x32 images (CIFAR variant: 3x3 stem, no max-pool)."""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from hier_avg.models.im2col import conv_function


class BasicBlock(nn.Module):
  features: int
  strides: int = 1
  conv: str = 'xla'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             conv_general_dilated=conv_function(self.conv))
    y = conv(self.features, (3, 3), self.strides, padding=1)(x)
    y = nn.relu(norm()(y))
    y = conv(self.features, (3, 3), padding=1)(y)
    y = norm()(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      # Projection shortcut when the shape changes (He et al., option B).
      x = conv(self.features, (1, 1), self.strides)(x)
      x = norm()(x)
    return nn.relu(x + y)


class CifarResNet(nn.Module):
  stage_sizes: Sequence[int]
  num_classes: int = 10
  conv: str = 'xla'            # Convolution kernel: 'xla' or 'im2col'.
  dtype: Any = jnp.float32     # Compute dtype; parameters stay float32.

  @nn.compact
  def __call__(self, x_NxHxWxC, train: bool = False):
    x = nn.Conv(64, (3, 3), padding=1, use_bias=False, dtype=self.dtype,
                conv_general_dilated=conv_function(self.conv))(x_NxHxWxC)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                     epsilon=1e-5, dtype=self.dtype)(x)
    x = nn.relu(x)
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = BasicBlock(64 * 2**i, strides, self.conv, self.dtype)(x, train)
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


ResNet18 = functools.partial(CifarResNet, stage_sizes=(2, 2, 2, 2))
