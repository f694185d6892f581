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

from hier_avg import errors

_OWN_FILES = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
    os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), 'launch.py'),
)


class _OwnInfoOnly(logging.Filter):
  """Passes warnings from anyone, and INFO lines logged by hier_avg itself.

  Except a full disk: orbax's background threads log it, with tracebacks,
  several times over, and the launcher says it in one line.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    if os.path.abspath(record.pathname).startswith(_OWN_FILES):
      return True
    if record.levelno < logging.WARNING:
      return False
    error = record.exc_info[1] if record.exc_info else None
    return not (errors.out_of_space(error) or
                errors.out_of_space(Exception(record.getMessage())))


_FILTER = _OwnInfoOnly()


def quiet_third_party(quiet: bool = True) -> None:
  """Drops other libraries' INFO lines (or shows them again: quiet=False)."""
  handler = absl_logging.get_absl_handler()
  if quiet:
    handler.addFilter(_FILTER)
  else:
    handler.removeFilter(_FILTER)
