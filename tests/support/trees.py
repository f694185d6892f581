"""Comparing pytrees: the same structure, leaf by leaf close."""

import chex


def assert_trees_close(a, b, atol=1e-5, rtol=1e-5):
  """`a` and `b` have the same structure and leaves within tolerance.

  The same structure: containers, their keys and order, and None leaves;
  leaves in the same order are not enough. Close: every leaf of `a` within
  `atol + rtol * |b|` of the one of `b`.
  """
  chex.assert_trees_all_equal_structs(a, b)
  chex.assert_trees_all_close(a, b, atol=atol, rtol=rtol)
