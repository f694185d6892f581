"""What the runtime needs from an algorithm: a few functions, no subclass.

The runtime (`engine.py`) owns the sharded state, the compiled rounds and
the data placement; an algorithm (`hier_avg/algorithms/`) says what one
local step does to a device's block of learners, what happens after a
round (averaging, or nothing), which extra state it keeps, and what its
communication costs. Hier-AVG and simulated ASGD are two such values.
"""

import dataclasses
from typing import Any, Callable

import jax

from hier_avg.core.events import Event
from hier_avg.core.schedule import Schedule
from hier_avg.core.state import TrainState
from hier_avg.runtime.communication import Channel


def _unchanged(state: TrainState) -> TrainState:
  return state


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """An algorithm as functions of a device's block of learners.

  The step and event functions run inside `shard_map`: their `state`
  holds the device's block of learners (leading grid axes) and the
  replicated step, and they may use collectives over the mesh axes.
  """
  description: str
  # When averaging happens: its events (`core/events.py`) end the rounds.
  schedule: Schedule
  # (state, batch) -> (state, [block...] losses): one step of every
  # learner of the block; batch is ([block..., B, H, W, C], [block..., B]).
  local_step: Callable[[TrainState, Any], tuple[TrainState, jax.Array]]
  # (whole state, outside `shard_map`) -> what one event of each of the
  # algorithm's communication channels costs, by channel name.
  channels: Callable[[TrainState], dict[str, Channel]]
  # steps -> events of each channel, by name, in the first `steps` steps.
  event_counts: Callable[[int], dict[str, int]]
  # The synchronous warmup (`Round.synchronous`; None: not supported):
  # (state, batch) -> (state, losses), one step of synchronous SGD, every
  # learner's gradient averaged over all learners before its update; and
  # (state) -> (state, measures), the outermost level's averaging after it.
  sync_step: (Callable[[TrainState, Any], tuple[TrainState, jax.Array]]
              | None) = None
  after_sync: Callable[[TrainState], tuple[TrainState, dict]] | None = None
  # An averaging event (`Event`): (state, event[, before]) -> record, its
  # collective on the models as they are (a pure function of the state:
  # steps after it do not wait for it; its measures of `before`'s);
  # (state, event, record) -> (state, measures), its result applied,
  # measures mapping names ('drift', ...) to per-learner [block...]
  # values; (state, event, record) -> state, a started event kept across
  # a round's end, and (state, event) -> record, read back.
  start: Callable[[TrainState, Event], Any] | None = None
  apply: Callable[[TrainState, Event, Any],
                  tuple[TrainState, dict[str, jax.Array]]] | None = None
  keep: Callable[[TrainState, Event, Any], TrainState] | None = None
  kept: Callable[[TrainState, Event], Any] | None = None
  # Optional `TrainState` fields this algorithm fills ('outer', 'stale',
  # 'comm'), and the function that fills them from the fresh state (inside
  # jit).
  extra_state: tuple[str, ...] = ()
  extend_state: Callable[[TrainState], TrainState] = _unchanged
  # Simulated outages and speeds (`core/membership.py`): each round then
  # takes who is up and who computes at each of its steps as data, and
  # `local_step`'s batch is (images, labels, takes, up, returning, any
  # returning). None: every learner, always.
  membership: Any = None
