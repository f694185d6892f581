"""One run per workdir: the lock, its message, and its end with the process."""

import os
import signal
import subprocess
import sys

from absl.testing import absltest

from configs import cifar10
from hier_avg import train
from hier_avg.run import workdirs
from hier_avg.errors import UserError
from tests.support import devices
from tests.support import launcher


def setUpModule():
  devices.set_up_devices()


class LockTest(absltest.TestCase):

  def test_second_hold_is_refused(self):
    workdir = self.create_tempdir().full_path
    lock = workdirs.Lock(workdir)
    with self.assertRaisesRegex(
        UserError, rf'--workdir={workdir} is in use by another run .*; '
        'wait for it to end, or choose another folder'):
      workdirs.Lock(workdir)
    self.assertEqual(os.listdir(workdir), [])  # The lock writes nothing.
    lock.release()
    workdirs.Lock(workdir).release()  # Free again.

  def test_a_killed_holder_leaves_no_stale_lock(self):
    workdir = self.create_tempdir().full_path
    holder = subprocess.Popen(
        [sys.executable, '-c', 'import sys, time; from hier_avg.run import '
         'workdirs; lock = workdirs.Lock(sys.argv[1]); '
         'print("held", flush=True); time.sleep(600)', workdir],
        env=launcher.python_env(), stdout=subprocess.PIPE,
        text=True)
    self.assertEqual(holder.stdout.readline().strip(), 'held')
    with self.assertRaisesRegex(UserError, 'is in use by another run'):
      workdirs.Lock(workdir)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
    workdirs.Lock(workdir).release()

  def test_a_run_on_a_held_workdir_stops_before_writing(self):
    workdir = self.create_tempdir().full_path
    config = cifar10.get_config('cpu')
    config.data.name = 'synthetic'
    config.train.steps = 1
    lock = workdirs.Lock(workdir)
    with self.assertRaisesRegex(UserError, 'is in use by another run'):
      train.train_and_evaluate(config, workdir)
    lock.release()
    self.assertEqual(os.listdir(workdir), [])


if __name__ == '__main__':
  absltest.main()
