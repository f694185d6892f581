"""Convolution as im2col + one matmul: fast when learners are packed.

`jax.vmap` over learners turns `lax.conv_general_dilated` into a grouped
convolution (one group per learner), which XLA runs far slower than one
dense convolution of the same total batch. Written as "gather the k x k
patches, then a matmul", a vmapped convolution becomes a *batched matmul*
over the learner axis (`einsum('pnk,pko->pno')`), a kernel every backend
runs at full speed. The patches are shifted strided slices (no gather).

`im2col_conv` has `lax.conv_general_dilated`'s signature, so it plugs into
`flax.linen.Conv(conv_general_dilated=...)` and the parameters (names,
shapes, initialization) stay exactly those of `nn.Conv`.
"""

import math

import jax
import jax.numpy as jnp
from jax import lax

_NHWC_HWIO = ('NHWC', 'HWIO', 'NHWC')


def im2col_conv(lhs, rhs, window_strides, padding, lhs_dilation=None,
                rhs_dilation=None, dimension_numbers=None,
                feature_group_count=1, precision=None,
                preferred_element_type=None):
  """`lax.conv_general_dilated` for NHWC inputs and HWIO kernels."""
  expected = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC_HWIO)
  if dimension_numbers is not None and lax.conv_dimension_numbers(
      lhs.shape, rhs.shape, dimension_numbers) != expected:
    raise NotImplementedError('im2col_conv supports NHWC/HWIO only.')
  if any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ())):
    raise NotImplementedError('im2col_conv does not support dilation.')
  if feature_group_count != 1:
    raise NotImplementedError('im2col_conv does not support groups.')
  kh, kw, cin, cout = rhs.shape
  _, h, w, _ = lhs.shape
  sh, sw = window_strides
  if isinstance(padding, str):
    padding = lax.padtype_to_pads((h, w), (kh, kw), (sh, sw), padding)
  (top, bottom), (left, right) = padding
  x = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
  ho = (h + top + bottom - kh) // sh + 1
  wo = (w + left + right - kw) // sw + 1
  # Patch layout (i, j, c) matches the HWIO kernel flattened to [kh*kw*cin].
  patches = jnp.concatenate(
      [x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
       for i in range(kh) for j in range(kw)], axis=-1)
  return jnp.einsum('nhwk,ko->nhwo', patches,
                    rhs.reshape(kh * kw * cin, cout), precision=precision,
                    preferred_element_type=preferred_element_type)


CONVS = ('xla', 'im2col')


def conv_function(name: str):
  """The `conv_general_dilated` for `nn.Conv`: None keeps XLA's own."""
  return {'xla': None, 'im2col': im2col_conv}[name]


def patch_bytes(fn, *args) -> int:
  """Bytes of the im2col patches of every dense convolution `fn` runs.

  Traces `fn(*args)` (nothing is computed) and adds, for each
  `conv_general_dilated` without feature groups (depthwise convolutions
  stay XLA's), `N * Ho * Wo * kh * kw * Cin` elements of the input's dtype:
  the patch matrix im2col builds. Training keeps each layer's patches for
  the backward matmul, so the sum, not the largest, is what must fit.
  """
  total = 0
  for eqn in _equations(jax.make_jaxpr(fn)(*args).jaxpr):
    if (eqn.primitive.name != 'conv_general_dilated' or
        eqn.params['feature_group_count'] != 1):
      continue
    lhs, rhs = (v.aval for v in eqn.invars[:2])
    out = eqn.outvars[0].aval
    numbers = eqn.params['dimension_numbers']
    batch = lhs.shape[numbers.lhs_spec[0]]
    cin = rhs.shape[numbers.rhs_spec[1]]
    window = math.prod(rhs.shape[d] for d in numbers.rhs_spec[2:])
    positions = math.prod(out.shape[d] for d in numbers.out_spec[2:])
    total += batch * positions * window * cin * lhs.dtype.itemsize
  return total


def _equations(jaxpr):
  """Every equation of `jaxpr` and of the jaxprs nested in it."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, 'jaxpr', sub)  # A ClosedJaxpr or a Jaxpr.
        if hasattr(inner, 'eqns'):
          yield from _equations(inner)
