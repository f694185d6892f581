"""launch.py as a user meets it: one-line refusals, quiet logs, defaults."""

import os
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized
import pytest

from hier_avg.run import checkpoint
from tests.support import launcher
from tests.support import outputs

# Each test starts launch.py processes.
pytestmark = pytest.mark.slow


class RefusalTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('misspelled_key', '--config.hier.k3=2',
       r'hier.k3 is not a config key; did you mean hier.k2 or hier.k1\?'),
      ('renamed_key', '--config.mesh.pack=vmap',
       'mesh.pack is now called runtime.learner_loop'),
      ('value_of_the_wrong_type', '--config.hier.k1=two',
       "flag --config.hier.k1=two: invalid literal for int"),
      ('infinite_length', '--config.train.epochs=inf',
       'train.epochs=inf must be a finite number'),
      ('images_too_small', '--config.data.synthetic_image_size=4',
       "model.name='cnn_small' cannot take images of shape"),
  )
  def test_one_line_exit_2_nothing_written(self, flag, message):
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    result = launcher.run(workdir, *launcher.FAST, flag)
    self.assertEqual(result.returncode, 2, result.stderr[-2000:])
    errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
    self.assertLen(errors, 1)
    self.assertRegex(errors[0], message)
    self.assertNotIn('Traceback', result.stderr)
    self.assertFalse(os.path.exists(workdir))


class FullDiskTest(absltest.TestCase):

  def test_one_line_no_temporary_folder_and_no_checkpoint_lost(self):
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    flags = (*launcher.FAST, '--config.train.log_every=2',
             '--config.train.checkpoint_every=2')
    first = launcher.run(workdir, *flags, '--config.train.steps=4')
    self.assertEqual(first.returncode, 0, first.stderr[-2000:])
    folder = os.path.join(workdir, checkpoint.CHECKPOINT_DIR)
    saved = outputs.snapshot(folder)
    # Resumed with every file past 200 kB failing to write, as on a full
    # disk: the checkpoint of step 6 (megabytes) cannot be written.
    full = launcher.run(workdir, *flags, '--config.train.steps=8',
                        max_file_bytes=200_000)
    self.assertEqual(full.returncode, 2, full.stderr[-3000:])
    errors = [l for l in full.stderr.splitlines() if l.startswith('error:')]
    self.assertLen(errors, 1, full.stderr[-3000:])
    self.assertIn(f'error: no space left to write in --workdir={workdir} (',
                  errors[0])
    self.assertIn('rerun the same command', errors[0])
    # No temporary folder left; the checkpoints saved before, untouched.
    self.assertEqual(outputs.snapshot(folder), saved)
    # With room again, the same command resumes and finishes.
    again = launcher.run(workdir, *flags, '--config.train.steps=8')
    self.assertEqual(again.returncode, 0, again.stderr[-2000:])
    self.assertIn('resuming at step 4', again.stderr)


class LogsTest(absltest.TestCase):

  def test_a_run_prints_its_own_lines_only(self):
    tmp = self.create_tempdir().full_path
    quiet = launcher.run(os.path.join(tmp, 'quiet'), *launcher.FAST,
                         '--config.train.steps=8', '--config.train.log_every=4')
    self.assertEqual(quiet.returncode, 0, quiet.stderr[-2000:])
    lines = quiet.stderr.splitlines()
    # Layout (2), the data's placement, 2 progress rows, 1 evaluation,
    # where the results are.
    self.assertLen(lines, 7, quiet.stderr)
    self.assertIn('placement device (data.placement=auto)', lines[2])
    self.assertNotIn('orbax', quiet.stderr)
    self.assertNotIn("Unable to initialize backend 'tpu'", quiet.stderr)
    self.assertIn('hier_avg: done; summary.json', lines[-1])
    verbose = launcher.run(os.path.join(tmp, 'verbose'), *launcher.FAST,
                           '--config.train.steps=8', '--verbose_logs')
    self.assertGreater(len(verbose.stderr.splitlines()), 2 * len(lines))


class DefaultsTest(absltest.TestCase):

  def test_cpu_runs_get_eight_devices_without_xla_flags(self):
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    env = launcher.python_env()
    env.pop('XLA_FLAGS', None)
    result = subprocess.run(
        [sys.executable, os.path.join(launcher.REPO, 'launch.py'),
         f'--config={os.path.join(launcher.REPO, launcher.CPU_CONFIG)}',
         f'--workdir={workdir}', *launcher.FAST, '--config.train.steps=4'],
        env=env, cwd=launcher.REPO, capture_output=True, text=True,
        timeout=launcher.DEADLINE_S, check=False)
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    self.assertIn("on mesh {'node': 2, 'local': 4}", result.stderr)

  def test_compilation_cache_fills_the_folder_it_is_given(self):
    tmp = self.create_tempdir().full_path
    cache = os.path.join(tmp, 'cache')
    result = launcher.run(os.path.join(tmp, 'run'), *launcher.FAST,
                          '--config.train.steps=4',
                          f'--config.runtime.compilation_cache={cache}')
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    self.assertNotEmpty(os.listdir(cache))


class SeveralHostsTest(absltest.TestCase):

  def _start_pair(self, workdirs, logs, *flags):
    port = launcher.free_port()
    return [launcher.start(workdirs[i], *launcher.FAST, *flags,
                           f'--coordinator_address=127.0.0.1:{port}',
                           '--num_processes=2', f'--process_id={i}',
                           devices=4, log=logs[i]) for i in range(2)]

  def test_a_workdir_not_shared_is_refused_by_both(self):
    tmp = self.create_tempdir().full_path
    workdirs = [os.path.join(tmp, f'host{i}') for i in range(2)]
    logs = [os.path.join(tmp, f'log{i}.txt') for i in range(2)]
    runs = self._start_pair(workdirs, logs, '--config.train.steps=4')
    texts = launcher.finish_all(runs)
    for run, text in zip(runs, texts):
      self.assertEqual(run.returncode, 2, text[-2000:])
      self.assertIn(f'--workdir={workdirs[0]} is not shared: process(es) 1 '
                    'do not see', text.replace(workdirs[1], workdirs[0]))

  def test_sigterm_to_one_host_stops_both_at_one_checkpoint(self):
    tmp = self.create_tempdir().full_path
    workdir = os.path.join(tmp, 'run')
    logs = [os.path.join(tmp, f'log{i}.txt') for i in range(4)]
    flags = ('--config.train.log_every=2', '--config.train.checkpoint_every=0',
             '--config.hier.k1=2', '--config.hier.k2=2')
    runs = self._start_pair([workdir] * 2, logs[:2], *flags,
                            '--config.train.steps=400')
    launcher.wait_for_step(workdir, 4, runs)
    runs[1].terminate()  # Only the second host is told.
    texts = launcher.finish_all(runs, timeout=120)
    for run, text in zip(runs, texts):
      self.assertEqual(run.returncode, 0, text[-2000:])
      self.assertIn('preempted: stopped by', text)
    saved = [d for d in os.listdir(os.path.join(workdir, 'checkpoints'))
             if d.isdigit()]
    self.assertLen(saved, 1)
    stopped_at = int(saved[0])
    # Both processes resume from it and finish the run.
    runs = self._start_pair([workdir] * 2, logs[2:], *flags,
                            f'--config.train.steps={stopped_at + 4}')
    launcher.finish_all(runs, check=True)
    summary = outputs.summary(workdir)
    self.assertEqual(summary['resumed_from_step'], stopped_at)


if __name__ == '__main__':
  absltest.main()
