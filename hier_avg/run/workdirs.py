"""The run's folder: refused when unusable, created, and held by one run.

Two runs on one workdir would interleave their metrics rows and write and
prune each other's checkpoints (`keep_checkpoints`), so one could resume
from the other's state or lose its own. Process 0 of a run holds an
exclusive `flock` on the workdir folder itself for as long as it runs; a
second run is refused with one line. No file is written for it, and the
kernel drops the lock when the process ends, however it ends, so a killed
run never leaves a stale lock behind. (flock works on local file systems;
on NFS it may not exclude a run on another host.)
"""

import contextlib
import fcntl
import os
import secrets

import jax
from jax.experimental import multihost_utils
import numpy as np

from hier_avg.errors import UserError, require
from hier_avg.run import checkpoint, distributed, export
from hier_avg.run.metrics import METRICS_FILE, SUMMARY_FILE


# What a run keeps in its workdir, and whether each is a folder: a path
# of the other kind would fail a save after hours of training.
LAYOUT = ((checkpoint.CHECKPOINT_DIR, True), (METRICS_FILE, False),
          (SUMMARY_FILE, False), (export.MODEL_FILE, False))
# What a finished run leaves: never overwritten by a new run.
FINISHED = (SUMMARY_FILE, export.MODEL_FILE)


def check(workdir: str) -> None:
  """Refuses a workdir that is a file or holds a run we cannot continue.

  A run of ours creates `checkpoints/` before its first row, so a workdir
  with rows but without that folder holds something else; it is kept as it
  is. A finished run's results (summary, final model) with no checkpoint
  to resume from are kept too: a new run would overwrite them. A run of
  ours killed before its first checkpoint starts over.
  """
  require(bool(workdir), 'set --workdir to the folder for this run\'s '
          'outputs.')
  require(not os.path.exists(workdir) or os.path.isdir(workdir),
          f'--workdir={workdir} is a file; choose a folder.')
  for name, folder in LAYOUT:
    path = os.path.join(workdir, name)
    require(not os.path.exists(path) or os.path.isdir(path) == folder,
            f'{path} is a {"file" if folder else "folder"}, where a run '
            f'keeps its {name} {"folder" if folder else "file"}; move it '
            'away, or choose another --workdir.')
  checkpoints = os.path.join(workdir, checkpoint.CHECKPOINT_DIR)
  require(not (os.path.exists(os.path.join(workdir, METRICS_FILE)) and
               not os.path.isdir(checkpoints)),
          f'--workdir={workdir} already holds a run ({METRICS_FILE}) but no '
          'checkpoint to resume from; choose a new folder so nothing there is '
          'overwritten.')
  finished = [name for name in FINISHED
              if os.path.exists(os.path.join(workdir, name))]
  require(not finished or checkpoint.saved_steps(checkpoints),
          f'--workdir={workdir} holds a finished run ({", ".join(finished)})'
          f' but no checkpoint in {checkpoints}; choose a new folder so '
          'nothing there is overwritten.')


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
  """This process's hold on a workdir; `release()` or exit ends it.

  The lock is on the folder itself, so taking it, or being refused it,
  changes nothing in the workdir.
  """

  def __init__(self, workdir: str):
    self._fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(self._fd)
      raise UserError(f'--workdir={workdir} is in use by another run (it '
                      'holds the folder\'s lock); wait for it to end, or '
                      'choose another folder.') from None

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # Closing the last descriptor drops the lock.
      self._fd = None


@contextlib.contextmanager
def held(workdir: str):
  """Creates `workdir` and holds it while inside (process 0 alone).

  With several processes, each must see the same folder (checked first).
  """
  if not distributed.is_main_process():
    check_shared(workdir)
    yield
    return
  prepare(workdir)
  lock = Lock(workdir)
  try:
    check_shared(workdir)
    yield
  finally:
    lock.release()


def check_shared(workdir: str) -> None:
  """Refuses a workdir that some process does not share with process 0.

  Every process writes its learners' shards of each checkpoint and reads
  them back on resume: hosts that each see their own folder would resume
  from different steps, or not at all. Process 0 writes a file named by a
  fresh random token; every process looks for it; all learn together who
  did not see it, so all stop with the same line instead of some going on
  into the first collective alone.
  """
  if jax.process_count() == 1:
    return
  token = int(multihost_utils.broadcast_one_to_all(
      np.int32(secrets.randbits(31))))
  probe = os.path.join(workdir, f'.shared_check_{token}')
  if distributed.is_main_process():
    with open(probe, 'w'):
      pass
  distributed.barrier('hier_avg: workdir probe written')
  seen = multihost_utils.process_allgather(np.int32(os.path.exists(probe)))
  distributed.barrier('hier_avg: workdir probe seen')
  if distributed.is_main_process():
    os.remove(probe)
  blind = [i for i, s in enumerate(np.ravel(seen)) if not s]
  require(not blind,
          f'--workdir={workdir} is not shared: process(es) '
          f'{", ".join(map(str, blind))} do not see what process 0 writes '
          'there; use a folder every host mounts (NFS, a bucket mount), the '
          'same path on every host.')
