"""A results file is written whole or not at all.

A run can be killed, or a disk fill up, while it writes. Each file goes to
`<path>.partial` first and replaces `<path>` only once complete, so a
reader (a rerun, `sweep.py`, a notebook) sees the old file or the new one,
never half of one.
"""

import contextlib
import os

PARTIAL = '.partial'


@contextlib.contextmanager
def atomic(path: str, mode: str = 'w'):
  """Yields a file that replaces `path` when the block ends without error;
  after an error `path` is as it was and no partial file remains."""
  partial = path + PARTIAL
  try:
    with open(partial, mode) as f:
      yield f
    os.replace(partial, path)
  finally:
    if os.path.exists(partial):
      os.remove(partial)
