"""VGG-16/19 for 32x32 images, with BatchNorm (kuangliu/pytorch-cifar).

Simonyan & Zisserman (2015) configurations D and E: 3x3 convolutions (with
bias, as PyTorch's default in kuangliu's code) each followed by BatchNorm and
ReLU, a 2x2 max-pool after each of the five stages (32 -> 1 pixel), then a
single Dense layer from the 512 features to the classes: the three large
fully connected layers of the ImageNet VGG are dropped.
"""

import functools
from typing import Sequence, Union

import flax.linen as nn

from hier_avg.models.layers import DEFAULT_LAYERS
from hier_avg.models.layers import Layers
from hier_avg.models.cnn_small import max_pool_2x2

POOL = 'M'  # Marks a 2x2 max-pool in a configuration.
VGG16_LAYERS = (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL,
                512, 512, 512, POOL, 512, 512, 512, POOL)
VGG19_LAYERS = (64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL,
                512, 512, 512, 512, POOL, 512, 512, 512, 512, POOL)


class VGG(nn.Module):
  """conv3x3 + BN + ReLU stacks with max-pools; Dense to the classes."""
  layer_config: Sequence[Union[int, str]]  # Conv widths and POOL marks.
  num_classes: int = 10
  layers: Layers = DEFAULT_LAYERS  # Convolution kernel, compute dtype.

  @nn.compact
  def __call__(self, x_NxHxWxC, train: bool = False):
    norm = self.layers.batch_norm(train)
    conv = functools.partial(self.layers.conv, use_bias=True)
    x = x_NxHxWxC
    for layer in self.layer_config:
      if layer == POOL:
        x = max_pool_2x2(x)
      else:
        x = nn.relu(norm()(conv(layer, (3, 3), padding=1)(x)))
    x = x.reshape((x.shape[0], -1))  # 1x1x512 after five pools of 32x32.
    return self.layers.dense(self.num_classes)(x)


VGG16 = functools.partial(VGG, layer_config=VGG16_LAYERS)
VGG19 = functools.partial(VGG, layer_config=VGG19_LAYERS)
