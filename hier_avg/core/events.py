"""Averaging events: what the schedule asks of the exchange, and when.

An event is one averaging of one level's groups over one fragment of that
level's parameters (`core/fragments.py`; a level of one fragment has one,
the whole model). Its collective starts after step `start`, on the models
as they are then (the snapshot), and its result is applied after step
`apply`: `start = apply - tau` for a level late by tau (`hier.delay`),
`start = apply` otherwise. Fragment f of a level of period T (times the
phase's multiplier) applies after step floor(T (f + 1) / F) of each of its
periods, counted from the phase's start (`Schedule.phases`). The level's
other averaged parts and its policy go with its last fragment.

Several events applying after one step apply innermost first, each on
what the one before left. A level whose whole model is due hides the
levels inside it: they would average what it averages anyway (the widest
wins), so they have no event then. Warmup steps (synchronous SGD) have
none: their gradients are averaged inside the step.

These are functions of the schedule and the step alone, so the rounds, the
engine's compiled programs, the counters and the plain-loop oracle all
read the same events.
"""

import dataclasses
from typing import Any

from hier_avg.core import fragments as fragments_lib

# `core/schedule.py`'s Level and Schedule (which read these events).
Level = Schedule = Any


@dataclasses.dataclass(frozen=True)
class Event:
  level: Level
  fragment: int   # Which of the level's fragments (0 for a whole model).
  start: int      # The step after which its collective starts.
  apply: int      # The step after which its result is applied.

  @property
  def late(self) -> bool:
    return self.start < self.apply

  @property
  def closes_period(self) -> bool:
    """Whether the level's other parts and policy go with this event."""
    return self.fragment == self.level.fragments - 1

  @property
  def slot(self) -> str:
    """The name of what this event keeps in flight (one per level and
    fragment: a level's next event on a fragment starts after this one
    applies)."""
    if self.level.fragments == 1:
      return self.level.name
    return f'{self.level.name}_fragment{self.fragment}'


def applied_after(schedule: Schedule, step: int) -> tuple[Event, ...]:
  """The events applied after step `step` (1-based), innermost first."""
  if not schedule.levels or step <= schedule.sync_warmup:
    return ()
  phase = schedule.phase_of(step)
  done = step - phase.start
  events = []
  for level in reversed(schedule.levels):
    period = level.period * phase.multiplier
    due = [f for f, offset in enumerate(fragments_lib.offsets(
        period, level.fragments)) if done % period == offset % period]
    events += [Event(level, f, step - level.delay, step)
               for f in reversed(due)]
    if len(due) == level.fragments:
      break
  return tuple(reversed(events))


def started_after(schedule: Schedule, step: int) -> tuple[Event, ...]:
  """The late events whose collective starts after step `step` (the
  snapshot), innermost first. Each is one that `applied_after` lists for
  a step tau later: a delay is below every period in effect, so no phase
  that is not known by `step` can hold it."""
  taus = sorted({level.delay for level in schedule.levels if level.delay})
  found = []
  for tau in taus:
    found += [event for event in applied_after(schedule, step + tau)
              if event.level.delay == tau and event.start == step]
  depth = {level.name: i for i, level in enumerate(schedule.levels)}
  return tuple(sorted(found, key=lambda e: (depth[e.level.name],
                                            e.fragment)))
