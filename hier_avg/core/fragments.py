"""Streamed averaging: a level's parameters in F fragments (`hier.fragments`).

A level with F > 1 fragments does not average the whole model at once. Its
parameter leaves, in the order of the model's flattened tree, are split
into F runs of consecutive whole leaves whose bytes are as equal as the
leaves allow (`partition`), and fragment f averages after step
`floor(T (f + 1) / F)` of each of the level's periods T (torchft's
Streaming DiLoCo convention, `offsets`): the last one at T, where the
whole level would have averaged. The bytes of one averaging event fall to
about 1/F of the model's; the bytes per period stay the same.

What else the level averages (BatchNorm statistics, the optimizer state
under `hier.opt_state='average'`) and what its policy resets goes with the
last fragment, at the end of the period. An inner level that averages at
the step of an outer fragment averages as usual, and then the fragment
takes the wider group's mean (of the inner means: groups nest and have
equal sizes), so every leaf ends its step with the widest mean due on it.
F = 1 is the plain level.
"""

from collections.abc import Sequence
import functools

import jax


def offsets(period: int, count: int) -> tuple[int, ...]:
  """Steps into each period after which fragment f = 0..count-1 averages
  (the last at `period`)."""
  return tuple(period * (f + 1) // count for f in range(count))


def partition(sizes: Sequence[int], count: int) -> tuple[tuple[int, ...], ...]:
  """Leaf indices of each of `count` fragments: runs of consecutive leaves.

  Of all the ways to cut `sizes` (bytes per leaf) into `count` non-empty
  runs, the one whose largest run is smallest, which is what one
  averaging event's peak costs; among equals, each cut as early as it can
  be (so the result depends on the sizes only).
  """
  n = len(sizes)
  assert 1 <= count <= n, (count, n)
  prefix = [0]
  for size in sizes:
    prefix.append(prefix[-1] + size)

  @functools.lru_cache(maxsize=None)
  def peak(start: int, runs: int) -> int:
    """The smallest largest run of leaves[start:] in `runs` runs."""
    if runs == 1:
      return prefix[n] - prefix[start]
    return min(max(prefix[cut] - prefix[start], peak(cut, runs - 1))
               for cut in range(start + 1, n - runs + 2))

  target = peak(0, count)
  bounds = [0]
  for runs in range(count, 1, -1):  # Each cut the earliest that still fits.
    start = bounds[-1]
    bounds.append(next(cut for cut in range(start + 1, n - runs + 2)
                       if prefix[cut] - prefix[start] <= target and
                       peak(cut, runs - 1) <= target))
  bounds.append(n)
  return tuple(tuple(range(a, b)) for a, b in zip(bounds, bounds[1:]))


def of_tree(tree, count: int) -> tuple[tuple[int, ...], ...]:
  """`partition` of a tree's leaves (one learner's, or a block's: only
  the ratios of the sizes matter), by bytes."""
  leaves = jax.tree.leaves(tree)
  return partition([x.size * x.dtype.itemsize for x in leaves], count)


def describe(tree, count: int) -> list[str]:
  """One line per fragment of one learner's `tree`: its leaves and bytes,
  for the run's log."""
  paths = jax.tree_util.tree_leaves_with_path(tree)
  lines = []
  for f, indices in enumerate(of_tree(tree, count)):
    nbytes = sum(paths[i][1].size * paths[i][1].dtype.itemsize
                 for i in indices)
    first, last = (jax.tree_util.keystr(paths[i][0])
                   for i in (indices[0], indices[-1]))
    lines.append(f'fragment {f}: {len(indices)} leaves, {nbytes / 1e6:.3f} '
                 f'MB, {first} .. {last}')
  return lines


def check(fragments: Sequence[int], periods: Sequence[int]) -> list[str]:
  """Problems with `hier.fragments` for levels of `periods` (innermost
  first), as lines for a UserError ([] when fine). Compression and delays
  compose with fragments (`core/exchange.py`)."""
  if not fragments:
    return []
  if len(fragments) != len(periods):
    return [f'hier.fragments={tuple(fragments)} has {len(fragments)} '
            f'entries but the hierarchy has {len(periods)} levels; give one '
            'per level, innermost first, or leave it empty.']
  problems = []
  for i, (count, period) in enumerate(zip(fragments, periods)):
    if count > period:
      problems.append(
          f'hier.fragments={tuple(fragments)}: level {i} averages every '
          f'{period} steps, too few for {count} fragments at steps of their '
          f'own; give it at most {period}.')
  return problems
