"""The one exception type a user is meant to see.

Anything that is the user's to fix (a config value, a missing data folder, a
mesh that does not fit the devices) raises `UserError` with a single line that
says what is wrong and how to fix it. `launch.py` prints that line and exits
non-zero without a traceback; everything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
  """A problem with the user's input, reported as one line."""

  def __init__(self, message: str):
    # One line, always: the launcher prints it verbatim.
    super().__init__(' '.join(str(message).split()))


def require(condition: bool, message: str) -> None:
  """Raises `UserError(message)` unless `condition` holds."""
  if not condition:
    raise UserError(message)
