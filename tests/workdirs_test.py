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


class CheckTest(absltest.TestCase):
  """What `workdirs.check` refuses before a run touches the workdir."""

  def make(self, *paths, folders=()):
    """A workdir holding files `paths` and folders `folders`."""
    workdir = self.create_tempdir().full_path
    for path in folders:
      os.makedirs(os.path.join(workdir, path))
    for path in paths:
      with open(os.path.join(workdir, path), 'w') as f:
        f.write('{}\n')
    return workdir

  def test_a_finished_run_without_checkpoints_is_kept(self):
    # Its checkpoints deleted (rm -rf W/checkpoints/*): a new run would
    # overwrite the summary, the model and the rows.
    for finished in ('summary.json', 'final_model.msgpack'):
      workdir = self.make(finished, 'metrics.jsonl', folders=('checkpoints',))
      with self.assertRaisesRegex(
          UserError, f'holds a finished run \\({finished}\\) but no '
          'checkpoint in'):
        workdirs.check(workdir)
    # Only moved-aside checkpoints count as none.
    workdir = self.make('summary.json', folders=(
        'checkpoints', 'checkpoints/8.unreadable'))
    with self.assertRaisesRegex(UserError, 'holds a finished run'):
      workdirs.check(workdir)
    workdirs.check(self.make('summary.json', folders=('checkpoints/8',)))

  def test_a_run_killed_before_its_first_checkpoint_starts_over(self):
    workdirs.check(self.make('metrics.jsonl', folders=('checkpoints',)))

  def test_each_path_of_the_layout_has_its_kind(self):
    for files, folders, message in (
        (('checkpoints',), (), 'checkpoints is a file, where a run keeps its '
         'checkpoints folder'),
        ((), ('metrics.jsonl',), 'metrics.jsonl is a folder, where a run '
         'keeps its metrics.jsonl file'),
        ((), ('summary.json',), 'summary.json is a folder'),
        ((), ('final_model.msgpack',), 'final_model.msgpack is a folder')):
      with self.subTest(message):
        with self.assertRaisesRegex(UserError, message):
          workdirs.check(self.make(*files, folders=folders))
