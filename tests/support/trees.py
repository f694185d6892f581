"""Comparing pytrees: the same structure, leaf by leaf close."""

import chex
import jax


def assert_trees_close(a, b, atol=1e-5, rtol=1e-5):
  """`a` and `b` have the same structure and leaves within tolerance.

  The same structure: containers, their keys and order, and None leaves;
  leaves in the same order are not enough. Close: every leaf of `a` within
  `atol + rtol * |b|` of the one of `b`.
  """
  chex.assert_trees_all_equal_structs(a, b)
  chex.assert_trees_all_close(a, b, atol=atol, rtol=rtol)


def assert_states_close(a, b, atol=1e-6, rtol=1e-6):
  """Two engine states (`TrainState`) that other programs computed.

  The step and the RNG keys are integer arithmetic, exact in any program:
  equal. Every other leaf (parameters, statistics, optimizer, outer and
  communication state) is equal to float32 rounding: two programs for the
  same arithmetic may round differently on another CPU.
  """
  chex.assert_trees_all_equal(a.step, b.step)
  chex.assert_trees_all_equal(jax.random.key_data(a.rng),
                              jax.random.key_data(b.rng))
  floats = lambda s: s.replace(step=0, rng=0)
  assert_trees_close(floats(a), floats(b), atol=atol, rtol=rtol)


def assert_trees_close_but_flips(a, b, atol, flip_atol, max_flips=0.02):
  """`a` and `b` agree to `atol`, except at most a `max_flips` share of
  each leaf's elements (one at least), which agree to `flip_atol`.

  For compressed averaging: rounding to a compressed value is a step
  function, so two float32 computations of its input that differ in the
  last bit (a sum in another order) may land a value one step apart; that
  step, passed through the learners' updates, is what `flip_atol` allows.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    diff = np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))
    assert diff.max(initial=0) <= flip_atol, (diff.max(), flip_atol)
    flips = np.count_nonzero(diff > atol)
    assert flips <= max(1, max_flips * diff.size), (flips, diff.size)
