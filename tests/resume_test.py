"""Killed, stopped or changed runs: resumption is exact, refusals are clean.

Each run is a real `launch.py` process. A run is killed (SIGKILL) or asked
to stop (SIGTERM) once its metrics show a given step; the same command then
resumes it, and it must end bit-identical to a run never interrupted.
"""

import os
import re
import signal

from absl.testing import absltest
from absl.testing import parameterized
import pytest

from hier_avg.run import export
from tests.support import launcher
from tests.support import outputs

# Every test runs launch.py as processes, killed and resumed.
pytestmark = pytest.mark.slow

# K1 = 2, K2 = 3: global averaging after steps 6 and 12, local after 2, 4,
# 8, 10. A checkpoint every 2 steps, a metrics row every step. B = 48 makes
# a step slow enough (~0.1 s) to stop the run where intended.
RUN = (*launcher.FAST[:3], '--config.data.batch_size=48',
       '--config.data.synthetic_train_examples=4096',
       '--config.train.steps=12', '--config.hier.k1=2', '--config.hier.k2=3',
       '--config.train.log_every=1', '--config.train.checkpoint_every=2',
       '--config.opt.schedule=cosine')


def start(workdir, *extra):
  return launcher.start(workdir, *RUN, *extra)


def stop_at(proc, workdir, step, sig):
  """Sends `sig` once the run has logged `step`; returns the logged step."""
  logged = launcher.wait_for_step(workdir, step, [proc])
  proc.send_signal(sig)
  return logged


def finish(proc):
  """Waits for the run, which must succeed; its stderr."""
  return launcher.finish(proc, check=True)


def final_model_bytes(workdir):
  with open(os.path.join(workdir, export.MODEL_FILE), 'rb') as f:
    return f.read()


_reference = {}


def reference(test):
  """The uninterrupted run, made once for the whole module."""
  if not _reference:
    workdir = os.path.join(test.create_tempdir().full_path, 'reference')
    finish(start(workdir))
    _reference['model'] = final_model_bytes(workdir)
    _reference['losses'] = [(r['step'], r['train_loss'])
                            for r in outputs.metrics_rows(workdir)]
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
    proc = start(workdir)
    killed_at = stop_at(proc, workdir, kill_step, signal.SIGKILL)
    self.assertLess(killed_at, 12)
    launcher.finish(proc)
    stderr = finish(start(workdir))
    self.assertIn('resuming at step', stderr)
    self.assertEqual(final_model_bytes(workdir), want['model'])
    # Every step logged exactly once, with the uninterrupted run's losses.
    self.assertEqual([(r['step'], r['train_loss'])
                      for r in outputs.metrics_rows(workdir)], want['losses'])

  def test_sigterm_saves_and_exits_cleanly(self):
    want = reference(self)
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    proc = start(workdir)
    stopped_at = stop_at(proc, workdir, 4, signal.SIGTERM)
    stderr = launcher.finish(proc)
    self.assertEqual(proc.returncode, 0)
    self.assertIn('preempted: stopped by SIGTERM at step', stderr)
    self.assertNotIn('Traceback', stderr)
    steps = sorted(int(d) for d in os.listdir(
        os.path.join(workdir, 'checkpoints')) if d.isdigit())
    self.assertGreaterEqual(steps[-1], stopped_at)
    finish(start(workdir))
    self.assertEqual(final_model_bytes(workdir), want['model'])

  def test_divergence_stops_at_the_bad_step_and_keeps_good_checkpoints(self):
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    proc = start(workdir, '--config.opt.lr=1e8',
                 '--config.train.checkpoint_every=1')
    stderr = launcher.finish(proc)
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
    finish(start(workdir, '--config.train.steps=4'))
    before = outputs.snapshot(workdir)
    refused = start(workdir, '--config.hier.group_size=2')
    stderr = launcher.finish(refused)
    self.assertEqual(refused.returncode, 2)
    errors = [l for l in stderr.splitlines() if l.startswith('error:')]
    self.assertLen(errors, 1)
    self.assertIn('made with hier.group_size=4, this run has '
                  'hier.group_size=2', errors[0])
    self.assertNotIn('Traceback', stderr)
    self.assertEqual(outputs.snapshot(workdir), before)
    # More steps (and other eval/log settings) continue the same run; its
    # cosine keeps the 4-step curve the run began with.
    finish(start(workdir, '--config.train.steps=6',
                 '--config.train.eval_every=3',
                 '--config.opt.horizon_steps=4'))
    self.assertEqual([r['step'] for r in outputs.metrics_rows(workdir)],
                     [1, 2, 3, 4, 5, 6])


if __name__ == '__main__':
  absltest.main()
