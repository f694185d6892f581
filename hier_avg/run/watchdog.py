"""Ends a multi-process run whose round hangs because a peer died in it.

A process that dies between two collectives is noticed by the others: the
next collective fails, or JAX's heartbeat says so, and `launch.py` exits
with `EXIT_PEER_LOST`. One that dies *inside* a collective is not: XLA:CPU
cannot cancel a collective (JAX cancels them on GPU only), and the
survivors wait in gloo's all-reduce for good (seen: more than 9 minutes).
So in a multi-process run a thread times each round (its program and the
stop request's all-gather after it, which waits for it) and, when one
takes far longer than the shortest of its kind so far, ends the process
with `EXIT_PEER_LOST`: every survivor does, within its bound, and a
supervisor (`launch.py --supervise`) restarts them all from the last
checkpoint.

A round's kind is its length and the level it ends with (rounds of one
kind run one program). The first round of a kind compiles its program,
so its bound is `run.watchdog_first_s`; later ones get
`run.watchdog_factor` times the shortest of the kind so far (the round's
work, without the compile), and at least `run.watchdog_min_s` (a loaded
machine's noise is no hang).
"""

import contextlib
import os
import sys
import threading
import time
from typing import Callable, Hashable

from absl import logging
import jax

from hier_avg import errors

POLL_S = 0.5  # How often the thread looks.


def _exit_peer_lost(message: str) -> None:
  logging.flush()
  print(f'error: {message}', file=sys.stderr, flush=True)
  os._exit(errors.EXIT_PEER_LOST)  # pylint: disable=protected-access


class Watchdog:
  """Times the rounds inside `watching`; ends the process past a bound."""

  def __init__(self, factor: float, min_s: float, first_s: float,
               clock: Callable[[], float] = time.monotonic,
               on_hang: Callable[[str], None] = _exit_peer_lost,
               margin_s: float = 0.0):
    self.factor, self.min_s, self.first_s = factor, min_s, first_s
    # Added to every bound: an elastic run's membership check may wait a
    # heartbeat timeout for a dying peer to be declared dead.
    self.margin_s = margin_s
    self._clock, self._on_hang = clock, on_hang
    self._shortest: dict[Hashable, float] = {}
    self._current = None  # (kind, what, start) of the round being timed.
    self._lock = threading.Lock()
    self._thread = None

  def bound(self, kind: Hashable) -> float:
    """The seconds a round of `kind` may take."""
    if kind not in self._shortest:
      return self.first_s + self.margin_s
    return max(self.min_s,
               self.factor * self._shortest[kind]) + self.margin_s

  def again(self) -> None:
    """The round being timed starts over as the first of its kind: an
    elastic run's survivors compile their programs anew."""
    with self._lock:
      if self._current is not None:
        kind, what, _ = self._current
        self._current = (('again', kind), what, self._clock())

  @contextlib.contextmanager
  def watching(self, kind: Hashable, what: str):
    """Times the block as a round of `kind` (`what` names it in the
    error)."""
    if self._thread is None:
      self._thread = threading.Thread(target=self._watch, daemon=True,
                                      name='hier_avg-watchdog')
      self._thread.start()
    with self._lock:
      self._current = (kind, what, self._clock())
    try:
      yield
    finally:
      with self._lock:
        _, _, start = self._current
        self._current = None
        took = self._clock() - start
        self._shortest[kind] = min(took, self._shortest.get(kind, took))

  def check(self) -> None:
    """Calls `on_hang` if the round being timed is past its bound."""
    with self._lock:
      if self._current is None:
        return
      kind, what, start = self._current
      took, bound = self._clock() - start, self.bound(kind)
      shortest = self._shortest.get(kind)
    if took > bound:
      before = ('its first, which compiles' if shortest is None else
                f'the shortest of its kind before: {shortest:.1f} s')
      self._on_hang(
          f'{what} has taken {took:.0f} s, past the watchdog\'s bound of '
          f'{bound:.0f} s ({before}): a peer process is gone or stuck '
          'inside a collective. Restart every process with the same command '
          '(launch.py --supervise does) to resume from the last checkpoint.')

  def _watch(self) -> None:
    while True:
      time.sleep(POLL_S)
      self.check()


def from_config(run_config) -> Watchdog | None:
  """The watchdog of a multi-process run; None alone or with
  `run.watchdog_factor=0`."""
  if jax.process_count() == 1 or not run_config.watchdog_factor:
    return None
  return Watchdog(run_config.watchdog_factor, run_config.watchdog_min_s,
                  run_config.watchdog_first_s,
                  margin_s=run_config.heartbeat_s if run_config.elastic
                  else 0.0)
