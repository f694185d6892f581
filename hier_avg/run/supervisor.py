"""`launch.py --supervise`: the run as a child process, restarted when a
process of a multi-process run is lost.

Every host runs its own supervisor (the same command on each, as without
one). When a process dies (killed, or aborted because process 0, which
runs JAX's coordination service, is gone), or exits with
`EXIT_PEER_LOST` (it lost contact with a peer, or its watchdog saw a round
hang: `run/watchdog.py`), its supervisor starts the same command again.
The restarted processes meet again in `jax.distributed.initialize` and
resume from the last checkpoint, exactly (README: "Checkpoints and
resuming"); only the steps after that checkpoint are taken again. A run
that ends (0), refuses its input (2) or diverges (3) is not restarted: the
same command would do the same. SIGTERM or SIGINT to the supervisor goes
to the run, which saves a checkpoint and exits; the supervisor then exits
with the run's code.
"""

import signal
import subprocess
import sys
import time
from typing import Sequence

from absl import logging

from hier_avg import errors

# Seconds between a lost run and its restart: the others have time to
# notice the loss and exit too, and process 0's port to be freed.
RESTART_DELAY_S = 1.0


def restarts(returncode: int) -> bool:
  """Whether a run that ended with `returncode` is started again: killed
  by a signal (negative) or a lost peer; not one that ended, refused its
  input or diverged."""
  return returncode < 0 or returncode == errors.EXIT_PEER_LOST


def supervise(command: Sequence[str], max_restarts: int) -> int:
  """Runs `command` until it ends other than by a lost process, or has
  been restarted `max_restarts` times; returns its last exit code (a
  signal's death as 128 + the signal, as a shell does)."""
  stopping = []
  child = None

  def forward(signum, frame):  # pylint: disable=unused-argument
    stopping.append(signum)
    if child is not None and child.poll() is None:
      child.send_signal(signum)

  before = {signum: signal.signal(signum, forward)
            for signum in (signal.SIGTERM, signal.SIGINT)}
  try:
    started = 0
    while True:
      child = subprocess.Popen(command)
      returncode = child.wait()
      if stopping or not restarts(returncode):
        break
      if started == max_restarts:
        print(f'error: the run was lost {started + 1} times (last: '
              f'{_describe(returncode)}); gave up after --max_restarts='
              f'{max_restarts} restarts. Rerun the same command to resume '
              'from the last checkpoint.', file=sys.stderr, flush=True)
        break
      started += 1
      logging.warning('hier_avg: supervisor: the run ended with %s; '
                      'restart %d of %d, from the last checkpoint',
                      _describe(returncode), started, max_restarts)
      time.sleep(RESTART_DELAY_S)
  finally:
    for signum, handler in before.items():
      signal.signal(signum, handler)
  return 128 - returncode if returncode < 0 else returncode


def _describe(returncode: int) -> str:
  if returncode < 0:
    return signal.Signals(-returncode).name
  return f'exit code {returncode} (a lost process)'
