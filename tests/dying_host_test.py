"""A 2-process run whose second process dies: the survivor exits, clearly.

Process 1 is killed (SIGKILL) mid-run. Process 0 must exit on its own
within 2 minutes with a one-line error, not hang; then both are started
again and resume from the last checkpoint to the end.
"""

import os
import signal
import subprocess
import time

from absl.testing import absltest

from tests import multihost_test
from tests import resume_test

SURVIVOR_DEADLINE_S = 120
# 12 steps: process 1 dies at step 6 with global averagings (every 4 steps,
# across the processes) behind it and ahead of the resumed pair; more steps
# would only repeat them.
STEPS = 12
FLAGS = (f'--config.train.steps={STEPS}', '--config.train.log_every=1',
         '--config.train.checkpoint_every=2', '--config.data.batch_size=48',
         '--config.data.synthetic_train_examples=4096')


class DyingHostTest(absltest.TestCase):

  def test_survivor_exits_and_both_resume(self):
    tmp = self.create_tempdir().full_path
    workdir = os.path.join(tmp, 'run')
    logs = [open(os.path.join(tmp, f'log{i}.txt'), 'w') for i in range(4)]
    port = multihost_test.free_port()

    def start_pair(first_log):
      return [multihost_test.start(
          workdir, 4, f'--coordinator_address=127.0.0.1:{port}',
          '--num_processes=2', f'--process_id={i}', *FLAGS,
          log=logs[first_log + i]) for i in range(2)]

    procs = start_pair(0)
    deadline = time.monotonic() + multihost_test.DEADLINE_S
    while time.monotonic() < deadline:
      rows = resume_test.rows(workdir)
      if rows and rows[-1]['step'] >= 6:
        break
      time.sleep(0.05)
    else:
      for p in procs:
        p.kill()
      self.fail('the run never reached step 6')
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    try:
      procs[0].wait(timeout=SURVIVOR_DEADLINE_S)
    except subprocess.TimeoutExpired:
      procs[0].kill()
      self.fail(f'process 0 still running {SURVIVOR_DEADLINE_S} s after '
                'process 1 died')
    waited = time.monotonic() - killed
    log0 = open(logs[0].name).read()
    print(f'survivor exited {waited:.1f} s after the kill, code '
          f'{procs[0].returncode}')
    self.assertNotEqual(procs[0].returncode, 0)
    errors = [l for l in log0.splitlines() if l.startswith('error:')]
    self.assertLen(errors, 1, log0[-3000:])
    self.assertIn('another process', errors[0])

    procs = start_pair(2)
    multihost_test.wait_all(self, procs, logs[2:])
    self.assertIn('resuming at step', open(logs[2].name).read())
    self.assertEqual([r['step'] for r in resume_test.rows(workdir)],
                     list(range(1, STEPS + 1)))


if __name__ == '__main__':
  absltest.main()
