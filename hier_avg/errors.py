"""The one exception type a user is meant to see.

Anything that is the user's to fix (a config value, a missing data folder, a
mesh that does not fit the devices) raises `UserError` with a single line that
says what is wrong and how to fix it. `launch.py` prints that line and exits
non-zero without a traceback; everything else is a bug and keeps its traceback.
"""


import errno

# launch.py's exit codes: input it refused, a run whose loss diverged, a
# multi-process run that lost a process (restart them all to resume:
# `launch.py --supervise` does).
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_PEER_LOST = 4


class PeerLost(Exception):
  """A multi-process run cannot go on with the processes it has left:
  launch.py exits with `EXIT_PEER_LOST` (a restart resumes it)."""


class UserError(ValueError):
  """A problem with the user's input, reported as one line."""

  def __init__(self, message: str):
    # One line, always: the launcher prints it verbatim.
    super().__init__(' '.join(str(message).split()))


def require(condition: bool, message: str) -> None:
  """Raises `UserError(message)` unless `condition` holds."""
  if not condition:
    raise UserError(message)


# How a full disk (or quota, or file-size limit) is reported: OSError's
# errno, or the os_error_code in tensorstore's message (orbax's writes).
_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NO_SPACE_MARKERS = tuple(f"os_error_code='{code}'"
                          for code in _NO_SPACE_ERRNOS) + (
                              'No space left on device',)


def out_of_space(error: BaseException) -> str | None:
  """The first line of `error` (or of an error it came from) if it says a
  write found no room, else None."""
  while error is not None:
    if (getattr(error, 'errno', None) in _NO_SPACE_ERRNOS or
        any(marker in str(error) for marker in _NO_SPACE_MARKERS)):
      return (str(error).strip().splitlines() or [''])[0][:300]
    error = error.__cause__ or error.__context__
  return None


# How XLA reports an allocation that does not fit (GPU, TPU and CPU).
_OUT_OF_MEMORY = ('RESOURCE_EXHAUSTED', 'Out of memory', 'out of memory')


def out_of_memory(error: Exception) -> UserError | None:
  """The one line for an accelerator allocation failure, else None."""
  text = str(error)
  if not any(marker in text for marker in _OUT_OF_MEMORY):
    return None
  first = next((line.strip() for line in text.splitlines() if line.strip()),
               '')[:200]
  return UserError(
      f'the device ran out of memory ({first}); lower data.batch_size (or '
      'train.eval_batch_size, if evaluating), put fewer learners on each '
      'device (more devices, or mesh.node_devices/mesh.local_devices), set '
      'model.conv=xla (im2col patches are large) or model.dtype=bfloat16.')
