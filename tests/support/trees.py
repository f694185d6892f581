"""Comparing pytrees leaf by leaf."""

import jax
import numpy as np


def assert_trees_close(a, b, atol=1e-5, rtol=1e-5):
  """Leaves of `a` and `b`, in order, within `atol + rtol * |b|`."""
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b), (len(leaves_a), len(leaves_b))
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol,
                               rtol=rtol)
