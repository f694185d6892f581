"""What a run prints: hier_avg's own lines, and others' only when they warn.

A run's INFO lines are its layout, progress, evaluations and where results
went. The libraries under it (orbax on every checkpoint save, jax's backend
probing) log many more INFO lines of their own; those are dropped unless the
user asks for them (`launch.py --verbose_logs`). Warnings and errors from
anyone always show.
"""

import logging
import os

from absl import logging as absl_logging

_OWN_FILES = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
    os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), 'launch.py'),
)


class _OwnInfoOnly(logging.Filter):
  """Passes warnings from anyone, and INFO lines logged by hier_avg itself."""

  def filter(self, record: logging.LogRecord) -> bool:
    return (record.levelno >= logging.WARNING or
            os.path.abspath(record.pathname).startswith(_OWN_FILES))


_FILTER = _OwnInfoOnly()


def quiet_third_party(quiet: bool = True) -> None:
  """Drops other libraries' INFO lines (or shows them again: quiet=False)."""
  handler = absl_logging.get_absl_handler()
  if quiet:
    handler.addFilter(_FILTER)
  else:
    handler.removeFilter(_FILTER)
