"""Killed, stopped or changed runs: resumption is exact, refusals are clean.

Each run is a real `launch.py` process. A run is killed (SIGKILL) or asked
to stop (SIGTERM) once its metrics show a given step; the same command then
resumes it, and it must end bit-identical to a run never interrupted.
"""

import json
import os
import re
import signal
import subprocess
import time

from absl.testing import absltest
from absl.testing import parameterized

from hier_avg.run import export
from tests import helpers
from tests import launch_test

# K1 = 2, K2 = 3: global averaging after steps 6 and 12, local after 2, 4,
# 8, 10. A checkpoint every 2 steps, a metrics row every step. B = 48 makes
# a step slow enough (~0.1 s) to stop the run where intended.
RUN = (*launch_test.FAST[:3], '--config.data.batch_size=48',
       '--config.data.synthetic_train_examples=4096',
       '--config.train.steps=12', '--config.hier.k1=2', '--config.hier.k2=3',
       '--config.train.log_every=1', '--config.train.checkpoint_every=2',
       '--config.opt.schedule=cosine')
DEADLINE_S = 300


def start(workdir, *extra):
  return helpers.start_launch(workdir, *RUN, *extra,
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)


def rows(workdir):
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.endswith('\n')]


def stop_at(proc, workdir, step, sig):
  """Sends `sig` once the run has logged `step`; returns the logged step."""
  deadline = time.monotonic() + DEADLINE_S
  while time.monotonic() < deadline and proc.poll() is None:
    logged = rows(workdir)
    if logged and logged[-1]['step'] >= step:
      proc.send_signal(sig)
      proc.wait(timeout=DEADLINE_S)
      return logged[-1]['step']
    time.sleep(0.005)
  proc.kill()
  raise AssertionError(f'run ended or hung before step {step}: '
                       f'{proc.stderr.read()[-2000:]}')


def finish(test, proc):
  _, stderr = helpers.finish_launch(proc, DEADLINE_S)
  test.assertEqual(proc.returncode, 0, stderr[-3000:])
  return stderr


def final_model_bytes(workdir):
  with open(os.path.join(workdir, export.MODEL_FILE), 'rb') as f:
    return f.read()


_reference = {}


def reference(test):
  """The uninterrupted run, made once for the whole module."""
  if not _reference:
    workdir = os.path.join(test.create_tempdir().full_path, 'reference')
    finish(test, start(workdir))
    _reference['model'] = final_model_bytes(workdir)
    _reference['losses'] = [(r['step'], r['train_loss'])
                            for r in rows(workdir)]
  return _reference


class ResumeTest(parameterized.TestCase):

  # Steps at which the run is killed: just before and just after the global
  # averaging of step 6, and mid local round (the kill lands at the first
  # step logged at or after these; checkpoints every 2 steps are behind it).
  @parameterized.named_parameters(('before_global', 5),
                                  ('after_global', 6),
                                  ('mid_round', 7))
  def test_sigkill_then_resume_is_bit_identical(self, kill_step):
    want = reference(self)
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    killed_at = stop_at(start(workdir), workdir, kill_step, signal.SIGKILL)
    self.assertLess(killed_at, 12)
    stderr = finish(self, start(workdir))
    self.assertIn('resuming at step', stderr)
    self.assertEqual(final_model_bytes(workdir), want['model'])
    # Every step logged exactly once, with the uninterrupted run's losses.
    self.assertEqual([(r['step'], r['train_loss']) for r in rows(workdir)],
                     want['losses'])

  def test_sigterm_saves_and_exits_cleanly(self):
    want = reference(self)
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    proc = start(workdir)
    stopped_at = stop_at(proc, workdir, 4, signal.SIGTERM)
    self.assertEqual(proc.returncode, 0)
    stderr = proc.stderr.read()
    self.assertIn('preempted: stopped by SIGTERM at step', stderr)
    self.assertNotIn('Traceback', stderr)
    steps = sorted(int(d) for d in os.listdir(
        os.path.join(workdir, 'checkpoints')) if d.isdigit())
    self.assertGreaterEqual(steps[-1], stopped_at)
    finish(self, start(workdir))
    self.assertEqual(final_model_bytes(workdir), want['model'])

  def test_divergence_stops_at_the_bad_step_and_keeps_good_checkpoints(self):
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    proc = start(workdir, '--config.opt.lr=1e8',
                 '--config.train.checkpoint_every=1')
    _, stderr = proc.communicate(timeout=DEADLINE_S)
    self.assertEqual(proc.returncode, 3)
    errors = [l for l in stderr.splitlines() if l.startswith('error:')]
    self.assertLen(errors, 1)
    self.assertRegex(errors[0], r'training diverged: non-finite (loss at '
                     r'step \d+ \(learner \d+\)|parameters after step \d+)')
    bad_step = int(re.search(r'step (\d+)', errors[0]).group(1))
    saved = [int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))
             if d.isdigit()]
    self.assertTrue(all(step < bad_step for step in saved), (saved, bad_step))

  def test_changed_config_is_refused_and_harmless_change_resumes(self):
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    finish(self, start(workdir, '--config.train.steps=4'))
    before = launch_test.snapshot(workdir)
    refused = start(workdir, '--config.hier.group_size=2')
    _, stderr = refused.communicate(timeout=DEADLINE_S)
    self.assertEqual(refused.returncode, 2)
    errors = [l for l in stderr.splitlines() if l.startswith('error:')]
    self.assertLen(errors, 1)
    self.assertIn('made with hier.group_size=4, this run has '
                  'hier.group_size=2', errors[0])
    self.assertNotIn('Traceback', stderr)
    self.assertEqual(launch_test.snapshot(workdir), before)
    # More steps (and other eval/log settings) continue the same run.
    finish(self, start(workdir, '--config.train.steps=6',
                       '--config.train.eval_every=3'))
    self.assertEqual([r['step'] for r in rows(workdir)], [1, 2, 3, 4, 5, 6])


if __name__ == '__main__':
  absltest.main()
