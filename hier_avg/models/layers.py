"""The layers every network builds from, resolved once from the config.

`make_layers(conv, dtype)` turns `model.conv` (already resolved to 'xla' or
'im2col') and `model.dtype` into one `Layers`: the constructors of the
convolutions, BatchNorm and Dense, bound to that kernel and compute dtype.
A network takes a `Layers` and hands it to its blocks; none of them reads
the config's strings.

Every BatchNorm of every model is made here so that code which recomputes
BatchNorm statistics (an exponential moving average with `BN_MOMENTUM`) and
the models agree on one constant.
"""

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from hier_avg.models.im2col import conv_function

# flax's momentum is the weight of the old running average: 0.9 here equals
# PyTorch's BatchNorm2d(momentum=0.1), the setting of the published CIFAR
# networks; epsilon is PyTorch's default too.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Layers:
  """Layer constructors bound to one convolution kernel and compute dtype.

  Parameters stay float32 whatever the compute dtype, and are those of
  `nn.Conv` whichever kernel runs, so checkpoints and averaging depend on
  neither.
  """
  conv_name: str  # The kernel `conv` runs: 'xla' or 'im2col'.
  dtype: Any      # Compute dtype.
  # `nn.Conv`. No bias unless `use_bias=True`: a BatchNorm follows almost
  # every convolution and its shift makes a bias redundant.
  conv: Callable[..., nn.Conv]
  # Depthwise `nn.Conv` (no bias), always XLA's kernel: call it with
  # `feature_group_count` equal to the input channels. im2col has no grouped
  # form, and needs none here: vmapped over learners, a depthwise
  # convolution stays depthwise (one group per learner and channel), not the
  # dense-per-group convolution that im2col replaces.
  depthwise_conv: Callable[..., nn.Conv]
  dense: Callable[..., nn.Dense]

  def batch_norm(self, train: bool) -> Callable[..., nn.BatchNorm]:
    """BatchNorm: batch statistics while training, running averages after."""
    return functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                             dtype=self.dtype)


def make_layers(conv: str = 'xla', dtype: str = 'float32') -> Layers:
  """The layers for `conv` ('xla' or 'im2col') computing in `dtype`."""
  compute_dtype = DTYPES[dtype]
  return Layers(
      conv_name=conv,
      dtype=compute_dtype,
      conv=functools.partial(nn.Conv, use_bias=False, dtype=compute_dtype,
                             conv_general_dilated=conv_function(conv)),
      depthwise_conv=functools.partial(nn.Conv, use_bias=False,
                                       dtype=compute_dtype),
      dense=functools.partial(nn.Dense, dtype=compute_dtype))


# What a network builds with unless given other layers.
DEFAULT_LAYERS = make_layers()
