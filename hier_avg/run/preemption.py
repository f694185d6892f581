"""SIGTERM / SIGINT as a request to checkpoint and stop, not a crash."""

import contextlib
import signal
import threading

from absl import logging

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
  """Set by a signal; the train loop checks it after every round."""

  def __init__(self):
    self.signal_name = None

  def __bool__(self) -> bool:
    return self.signal_name is not None


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
