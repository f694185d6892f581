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

from hier_avg.core.schedule import Level, Schedule
from hier_avg.core.state import TrainState
from hier_avg.runtime.communication import Channel


def _unchanged(state: TrainState) -> TrainState:
  return state


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """An algorithm as functions of a device's block of learners.

  `local_step` and `after_round` run inside `shard_map`: their `state` holds
  the device's block of learners (leading grid axes) and the replicated
  step, and they may use collectives over the mesh axes.
  """
  description: str
  # When averaging happens: a round ends at every averaging, which
  # `after_round` receives as its level (None: a round cut elsewhere).
  schedule: Schedule
  # (state, batch) -> (state, [block...] losses): one step of every
  # learner of the block; batch is ([block..., B, H, W, C], [block..., B]).
  local_step: Callable[[TrainState, Any], tuple[TrainState, jax.Array]]
  # (state, level or None[, delayed][, fragments=][, synchronous=]) ->
  # (state, measures):
  # measures maps names ('drift', ...) to per-learner [block...] values of
  # this round's averaging, returned to the host like the losses ({}:
  # none). With `delayed` True the level's averaging is a late one
  # (`Level.delay`): it applies the pending averaging that `keep` left in
  # the state. `fragments` (`Round.fragments`, fragmented levels only):
  # the parameter fragments averaged after the round; `level` then
  # averages the other parts. `synchronous` (`Round.synchronous`): after a
  # `sync_step`, whose models and optimizer states are equal already.
  after_round: Callable[..., tuple[TrainState, dict[str, jax.Array]]]
  # (whole state, outside `shard_map`) -> what one event of each of the
  # algorithm's communication channels costs, by channel name.
  channels: Callable[[TrainState], dict[str, Channel]]
  # steps -> events of each channel, by name, in the first `steps` steps.
  event_counts: Callable[[int], dict[str, int]]
  # (state, batch) -> (state, losses): one step of synchronous SGD (the
  # warmup's, `Round.synchronous`): every learner's gradient averaged over
  # all learners before its update. None: no warmup supported.
  sync_step: (Callable[[TrainState, Any], tuple[TrainState, jax.Array]]
              | None) = None
  # Optional `TrainState` fields this algorithm fills ('outer', 'stale',
  # 'comm'), and the function that fills them from the fresh state (inside
  # jit).
  extra_state: tuple[str, ...] = ()
  extend_state: Callable[[TrainState], TrainState] = _unchanged
  # Delayed averaging (schedules with `Level.delay`; None: not supported).
  # (state, level) -> pending: the level's averaging of the learners'
  # models as they are now, its collective included. A pure function of
  # the state: the steps that follow it in the round do not wait for it.
  snapshot: Callable[[TrainState, Level], Any] | None = None
  # (state, level, pending) -> state: the pending averaging kept in the
  # state, for the `after_round(..., delayed=True)` that applies it.
  keep: Callable[[TrainState, Level, Any], TrainState] | None = None
