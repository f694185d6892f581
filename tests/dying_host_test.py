"""A 2-process run whose second process dies: the survivor exits, clearly.

Process 1 is killed (SIGKILL) mid-run. Process 0 must exit on its own
within 2 minutes with a one-line error, not hang; then both are started
again and resume from the last checkpoint to the end.
"""

import os
import signal
import time

from absl.testing import absltest
import pytest

from tests.support import launcher
from tests.support import outputs

# Multi-process runs of launch.py, one killed.
pytestmark = pytest.mark.slow

DEADLINE_S = 400
SURVIVOR_DEADLINE_S = 120
# 12 steps: process 1 dies at step 6 with global averagings (every 4 steps,
# across the processes) behind it and ahead of the resumed pair; more steps
# would only repeat them.
STEPS = 12
FLAGS = (*launcher.FAST, '--config.hier.k1=2', '--config.hier.k2=2',
         f'--config.train.steps={STEPS}', '--config.train.log_every=1',
         '--config.train.eval_every=4', '--config.train.checkpoint_every=2',
         '--config.data.batch_size=48',
         '--config.data.synthetic_train_examples=4096')


class DyingHostTest(absltest.TestCase):

  def test_survivor_exits_and_both_resume(self):
    tmp = self.create_tempdir().full_path
    workdir = os.path.join(tmp, 'run')
    port = launcher.free_port()

    def start_pair(first_log):
      return [launcher.start(
          workdir, *FLAGS, f'--coordinator_address=127.0.0.1:{port}',
          '--num_processes=2', f'--process_id={i}', devices=4,
          log=os.path.join(tmp, f'log{first_log + i}.txt')) for i in range(2)]

    procs = start_pair(0)
    launcher.wait_for_step(workdir, 6, procs, DEADLINE_S)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    log0 = launcher.finish(procs[0], SURVIVOR_DEADLINE_S)
    waited = time.monotonic() - killed
    launcher.finish(procs[1])
    print(f'survivor exited {waited:.1f} s after the kill, code '
          f'{procs[0].returncode}')
    self.assertNotEqual(procs[0].returncode, 0)
    errors = [l for l in log0.splitlines() if l.startswith('error:')]
    self.assertLen(errors, 1, log0[-3000:])
    self.assertIn('another process', errors[0])

    procs = start_pair(2)
    log2, _ = launcher.finish_all(procs, DEADLINE_S, check=True)
    self.assertIn('resuming at step', log2)
    self.assertEqual([r['step'] for r in outputs.metrics_rows(workdir)],
                     list(range(1, STEPS + 1)))


if __name__ == '__main__':
  absltest.main()
