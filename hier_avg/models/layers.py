"""Building blocks shared by the CIFAR networks: BatchNorm and Conv factories.

Every BatchNorm of every model is made here so that code which recomputes
BatchNorm statistics (an exponential moving average with `BN_MOMENTUM`) and
the models agree on one constant.
"""

import functools
from typing import Any, Callable

import flax.linen as nn

from hier_avg.models.im2col import conv_function

# flax's momentum is the weight of the old running average: 0.9 here equals
# PyTorch's BatchNorm2d(momentum=0.1), the setting of the published CIFAR
# networks; epsilon is PyTorch's default too.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def batch_norm(train: bool, dtype: Any) -> Callable[..., nn.BatchNorm]:
  """BatchNorm: batch statistics while training, running averages after."""
  return functools.partial(nn.BatchNorm, use_running_average=not train,
                           momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                           dtype=dtype)


def conv(kernel: str, dtype: Any,
         use_bias: bool = False) -> Callable[..., nn.Conv]:
  """`nn.Conv` run by `kernel` ('xla' or 'im2col'), computing in `dtype`.

  No bias by default: a BatchNorm follows almost every convolution and its
  shift makes a bias redundant. Parameters are those of `nn.Conv` whichever
  kernel runs, so checkpoints and averaging do not depend on it.
  """
  return functools.partial(nn.Conv, use_bias=use_bias, dtype=dtype,
                           conv_general_dilated=conv_function(kernel))


def depthwise_conv(dtype: Any) -> Callable[..., nn.Conv]:
  """Depthwise `nn.Conv` (one filter per channel, no bias): XLA's kernel.

  Call with `feature_group_count` equal to the input channels. im2col has no
  grouped form, and needs none here: vmapped over learners, a depthwise
  convolution stays depthwise (one group per learner and channel), not the
  dense-per-group convolution that im2col replaces.
  """
  return functools.partial(nn.Conv, use_bias=False, dtype=dtype)
