"""SIGTERM / SIGINT as a request to checkpoint and stop, not a crash.

With several processes the signal may reach them in different rounds, or
reach only one (a single VM's maintenance event). Every process must stop
after the same round and save the same checkpoint, or one would wait in
the checkpoint's collectives while the others run the next round. So after
each round the processes share their requests (`StopRequest.agreed`): one
tiny all-gather per round, in multi-process runs only.
"""

import contextlib
import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
  """Set by a signal; the train loop checks it after every round."""

  def __init__(self):
    self.signal_name = None

  def __bool__(self) -> bool:
    return self.signal_name is not None

  def agreed(self, gather=None) -> bool:
    """Whether any process was asked to stop; every process gets the same.

    A process that was not signalled takes the request as its own.
    `gather(flag)`: every process's flag (default: over all devices; an
    elastic run's, over the live ones).
    """
    if jax.process_count() == 1:
      return bool(self)
    gather = gather or multihost_utils.process_allgather
    asked = gather(np.int32(bool(self)))
    if np.any(asked) and not self:
      self.signal_name = 'a signal to process ' + ', '.join(
          str(i) for i in np.flatnonzero(np.ravel(asked)))
    return bool(self)


@contextlib.contextmanager
def stop_on_signals():
  """Yields a `StopRequest` that SIGTERM or SIGINT sets while inside."""
  request = StopRequest()
  if threading.current_thread() is not threading.main_thread():
    yield request  # Signal handlers can only be set in the main thread.
    return

  def handler(signum, frame):
    del frame
    request.signal_name = signal.Signals(signum).name
    logging.warning('%s received: saving a checkpoint after this round, then '
                    'stopping.', request.signal_name)

  previous = {s: signal.signal(s, handler) for s in _SIGNALS}
  try:
    yield request
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
