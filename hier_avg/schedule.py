"""When learners average, as a list of levels.

A level is a set of grid axes to average over and a period in local steps.
Hier-AVG has two: local (axis 'local', every K1 steps) and global (all axes,
every K1*K2 steps). Periods nest (each divides the next), and when several
levels fall on the same step the widest one wins: a global averaging replaces
the local one of that step. A third level (pods of nodes) is one more entry.
"""

import dataclasses
from typing import Sequence

from hier_avg.errors import require
from hier_avg.topology import LOCAL, NODE


@dataclasses.dataclass(frozen=True)
class Level:
  name: str
  axes: tuple[str, ...]  # Grid axes averaged over.
  period: int            # Local steps between averagings at this level.


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Which averaging follows each step, and how many happened so far."""
  levels: tuple[Level, ...]  # Narrowest (most frequent) first.

  def __post_init__(self):
    for inner, outer in zip(self.levels, self.levels[1:]):
      assert outer.period % inner.period == 0, (inner, outer)
      assert set(inner.axes) <= set(outer.axes), (inner, outer)

  def level_after(self, step: int) -> Level | None:
    """The averaging done after local step `step` (1-based), or None."""
    for level in reversed(self.levels):
      if step % level.period == 0:
        return level
    return None

  def describe(self) -> str:
    return ', '.join(f'{l.name} averaging over {"+".join(l.axes)} every '
                     f'{l.period} step(s)' for l in self.levels)

  def counts(self, steps: int) -> dict[str, int]:
    """Averagings of each level done in the first `steps` steps.

    A step divisible by an outer period counts for the outer level only.
    """
    counts = {}
    for i, level in enumerate(self.levels):
      n = steps // level.period
      if i + 1 < len(self.levels):
        n -= steps // self.levels[i + 1].period
      counts[level.name] = n
    return counts


def hier_schedule(k1: int, k2: int) -> Schedule:
  """Hier-AVG: local averaging every K1 steps, global every K2 of them."""
  require(isinstance(k1, int) and k1 >= 1,
          f'hier.k1={k1!r} must be an integer >= 1 (local steps between local '
          'averagings).')
  require(isinstance(k2, int) and k2 >= 1,
          f'hier.k2={k2!r} must be an integer >= 1 (local averagings between '
          'global averagings).')
  return Schedule((Level('local', (LOCAL,), k1),
                   Level('global', (NODE, LOCAL), k1 * k2)))


def make_schedule(levels: Sequence[Level]) -> Schedule:
  return Schedule(tuple(levels))
