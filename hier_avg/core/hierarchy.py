"""The learners' nested groups and how often each averages: `hier.levels`.

A hierarchy of L levels, innermost first: level i averages each group of
S_i learners every T_i local steps. Groups nest (each S_i divides S_{i+1},
and S_{L-1} = P) and so do periods (each T_i divides T_{i+1}); after step t
the outermost level whose period divides t averages, replacing the inner
ones. Hier-AVG is L = 2, `((S, K1), (P, K1*K2))`; K-AVG is one level
`((P, K),)`; a datacentre of nodes of GPU pairs is `((2, 2), (8, 8),
(64, 32))`.

The learner grid gets one axis per level, outermost first, of sizes
`(S_{L-1}/S_{L-2}, ..., S_1/S_0, S_0)`: level i averages over the innermost
i + 1 axes. Axis and level names stay those of the paper for two levels:
axes ('node', 'local') and levels 'local' and 'global'. Deeper hierarchies
name the axes in between 'level1', 'level2', ... after the level that
first averages over them, and so their levels; one level is 'global' over
a grid of (1, P).
"""

import dataclasses

from hier_avg.core.schedule import Level, Schedule
from hier_avg.core.topology import LOCAL, NODE, Topology, make_topology
from hier_avg.errors import require


@dataclasses.dataclass(frozen=True)
class Hierarchy:
  """Group sizes and periods per level, innermost first, and the steps of
  synchronous averaging before them (`Schedule.sync_warmup`)."""
  num_learners: int
  group_sizes: tuple[int, ...]
  periods: tuple[int, ...]
  sync_warmup: int = 0

  @classmethod
  def from_config(cls, hier_config) -> 'Hierarchy':
    """`hier.levels`, or the two levels of `group_size`, `k1` and `k2`."""
    p, warmup = hier_config.num_learners, hier_config.sync_warmup_steps
    if not hier_config.levels:
      k1 = hier_config.k1
      return cls(p, (hier_config.group_size, p), (k1, k1 * hier_config.k2),
                 warmup)
    sizes, periods = zip(*(tuple(level) for level in hier_config.levels))
    check_levels(p, sizes, periods)
    return cls(p, tuple(sizes), tuple(periods), warmup)

  @property
  def depth(self) -> int:
    return len(self.group_sizes)

  @property
  def axis_names(self) -> tuple[str, ...]:
    """One grid axis per level (at least two), outermost first."""
    inner = [LOCAL] + [f'level{i}' for i in range(1, self.depth - 1)]
    return (NODE,) + tuple(reversed(inner))

  @property
  def grid_shape(self) -> tuple[int, ...]:
    """Learners along each axis: each level's groups of the one inside."""
    sizes = (1,) + self.group_sizes
    ratios = [outer // inner for inner, outer in zip(sizes, sizes[1:])]
    if self.depth == 1:
      ratios = [ratios[0], 1]  # (1, P): all of 'local', one 'node'.
    return tuple(reversed(ratios))

  @property
  def level_names(self) -> tuple[str, ...]:
    if self.depth == 1:
      return ('global',)
    return (('local',) + tuple(f'level{i}' for i in range(1, self.depth - 1))
            + ('global',))

  def schedule(self) -> Schedule:
    """Level i averages over the grid's innermost i + 1 axes (all, last)."""
    axes = self.axis_names
    return Schedule(tuple(
        Level(name, axes if i == self.depth - 1 else axes[-(i + 1):], period)
        for i, (name, period) in enumerate(zip(self.level_names,
                                               self.periods))),
                    self.sync_warmup)

  def topology(self, node_devices: int = -1, local_devices: int = -1,
               devices=None) -> Topology:
    """The grid on a mesh: `mesh.node_devices` and `mesh.local_devices`
    bound the outermost and innermost axes, the ones between fit."""
    mesh = (node_devices,) + (-1,) * (len(self.grid_shape) - 2) + (
        local_devices,)
    return make_topology(self.grid_shape, self.axis_names, mesh, devices)

  def describe(self) -> str:
    levels = ', '.join(f'{name}: groups of {size} every {period} step(s)'
                       for name, size, period in zip(
                           self.level_names, self.group_sizes, self.periods))
    if self.sync_warmup:
      return (f'synchronous for {self.sync_warmup} step(s), then {levels} '
              'counted from there')
    return levels


def per_level(values, depth: int, default) -> tuple:
  """A per-level setting (`hier.compress`, `hier.delay`, ...: a tuple,
  innermost first) -> one entry per level; empty: `default` at each."""
  return tuple(values) if values else (default,) * depth


def check_levels(num_learners: int, sizes, periods) -> None:
  """The rules of `hier.levels`, each broken one a line saying what to do."""
  levels = tuple(zip(sizes, periods))
  require(sizes[-1] == num_learners,
          f'hier.levels={levels}: the outermost group size {sizes[-1]} must '
          f'be hier.num_learners={num_learners} (the last level averages '
          'every learner).')
  for (s_in, t_in), (s_out, t_out) in zip(levels, levels[1:]):
    require(s_in < s_out and s_out % s_in == 0,
            f'hier.levels={levels}: group size {s_out} must be a larger '
            f'multiple of the {s_in} inside it (groups nest).')
    require(t_in < t_out and t_out % t_in == 0,
            f'hier.levels={levels}: period {t_out} must be a larger '
            f'multiple of the {t_in} inside it (an outer averaging replaces '
            'the inner ones of its step).')
