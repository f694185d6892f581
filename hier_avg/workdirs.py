"""The run's folder: refused when unusable, created, and held by one run.

Two runs on one workdir would interleave their metrics rows and write and
prune each other's checkpoints (`keep_checkpoints`), so one could resume
from the other's state or lose its own. Process 0 of a run holds an
exclusive `flock` on `WORKDIR/.lock` for as long as it runs; a second run
is refused with one line. The kernel drops the lock when the process ends,
however it ends, so a killed run never leaves a stale lock behind.
"""

import fcntl
import os
import socket

from hier_avg import checkpoint
from hier_avg.errors import UserError, require
from hier_avg.metrics import METRICS_FILE

LOCK_FILE = '.lock'


def check(workdir: str) -> None:
  """Refuses a workdir that is a file or holds a run we cannot continue.

  A run of ours creates `checkpoints/` before its first row, so a workdir
  with rows but without that folder holds something else; it is kept as it
  is. (A run of ours killed before its first checkpoint starts over.)
  """
  require(bool(workdir), 'set --workdir to the folder for this run\'s '
          'outputs.')
  require(not os.path.exists(workdir) or os.path.isdir(workdir),
          f'--workdir={workdir} is a file; choose a folder.')
  require(not (os.path.exists(os.path.join(workdir, METRICS_FILE)) and
               not os.path.isdir(os.path.join(workdir,
                                              checkpoint.CHECKPOINT_DIR))),
          f'--workdir={workdir} already holds a run ({METRICS_FILE}) but no '
          'checkpoint to resume from; choose a new folder so nothing there is '
          'overwritten.')


def prepare(workdir: str) -> None:
  """Creates `workdir`; refuses one that is not writable."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, '.write_test')
    with open(probe, 'w'):
      pass
    os.remove(probe)
  except OSError as e:
    raise UserError(f'cannot write to --workdir={workdir}: {e.strerror}; '
                    'choose a writable folder.') from None


class Lock:
  """This process's hold on a workdir; `release()` or exit ends it."""

  def __init__(self, workdir: str):
    self._file = open(os.path.join(workdir, LOCK_FILE), 'a+')
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._file.seek(0)
      holder = self._file.read().strip() or 'another process'
      self._file.close()
      raise UserError(f'--workdir={workdir} is in use by another run '
                      f'({holder}); wait for it to end, or choose another '
                      'folder.') from None
    self._file.seek(0)
    self._file.truncate()
    self._file.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
    self._file.flush()

  def release(self) -> None:
    if not self._file.closed:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
