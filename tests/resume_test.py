"""Killed, stopped or changed runs: resumption is exact, refusals are clean.

Each run is a real `launch.py` process. A run is killed (SIGKILL) or asked
to stop (SIGTERM) once its metrics show a given step; the same command then
resumes it, and it must end bit-identical to a run never interrupted.

Bitwise equality holds because the resumed run makes exactly the compiled
calls the uninterrupted one makes from the checkpoint on: the rounds are
cut where the cadence says, a function of the step, and a checkpoint is
only ever taken at a cut. Each test checks that first, from the rounds
the runs log (`--verbosity=1`): two programs that split the same steps
differently need not round alike on every CPU.
"""

import os
import re
import shutil
import signal

from absl.testing import absltest
from absl.testing import parameterized
import pytest

from hier_avg.run import export
from tests.support import launcher
from tests.support import outputs

# Every test runs launch.py as processes, killed and resumed.
pytestmark = pytest.mark.slow

# Synchronous step 1 (sync_warmup_steps=1), then K1 = 4, K2 = 2: local
# averaging after steps 5, 13, global after 1, 9, 17. A checkpoint (and a
# row) every 2 steps: rounds of 1 and 2 steps ((0,1) (1,1) (2,2) (4,1)
# (5,1) (6,2) (8,1) ...), and checkpoints inside averaging periods, at
# multiples of K1 and not. B = 48 makes a step slow enough (~0.1 s) to
# stop the run where intended.
RUN = (*launcher.FAST[:3], '--config.data.batch_size=48',
       '--config.data.synthetic_train_examples=4096',
       '--config.train.steps=20', '--config.hier.k1=4', '--config.hier.k2=2',
       '--config.hier.sync_warmup_steps=1',
       '--config.train.log_every=4', '--config.train.checkpoint_every=2',
       '--config.opt.schedule=cosine', '--verbosity=1')
_ROUND = re.compile(r'hier_avg: round of steps (\d+)\+(\d+)')
_RESUMED = re.compile(r'resuming at step (\d+)')


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


def calls(stderr):
  """The rounds `(first step, length)` a run logged, in order."""
  return [(int(first), int(length)) for first, length in
          _ROUND.findall(stderr)]


def final_model_bytes(workdir):
  with open(os.path.join(workdir, export.MODEL_FILE), 'rb') as f:
    return f.read()


_reference = {}


def reference(test):
  """The uninterrupted run, made once for the whole module."""
  if not _reference:
    workdir = os.path.join(test.create_tempdir().full_path, 'reference')
    _reference['calls'] = calls(finish(start(workdir)))
    _reference['model'] = final_model_bytes(workdir)
    _reference['losses'] = [(r['step'], r['train_loss'])
                            for r in outputs.metrics_rows(workdir)]
    _reference['figures'] = summary_figures(workdir)
  return _reference


def summary_figures(workdir):
  """The summary's final training loss and the steps it averages, and the
  number of round programs the whole run uses."""
  summary = outputs.summary(workdir)
  return (summary['final_train_loss'], summary['final_train_loss_steps'],
          summary['compiled_round_programs'])


class ResumeTest(parameterized.TestCase):

  def assert_resumed_with_the_same_calls(self, stderr, want):
    """The resumed run's rounds are the uninterrupted run's from its
    checkpoint on; returns the step it resumed at."""
    resumed_at = int(_RESUMED.search(stderr).group(1))
    self.assertEqual(calls(stderr),
                     [c for c in want['calls'] if c[0] >= resumed_at])
    return resumed_at

  def assert_ends_as_the_uninterrupted_run(self, workdir, want):
    self.assertEqual(final_model_bytes(workdir), want['model'])
    # Every step logged exactly once, with the uninterrupted run's losses.
    self.assertEqual([(r['step'], r['train_loss'])
                      for r in outputs.metrics_rows(workdir)], want['losses'])
    # 4096 examples, P = 8, B = 48: 10 steps an epoch (10 batches of 48
    # in each learner's 512), steps 11..20 the last; a checkpoint at 12 or
    # 14 carries the sum of its steps from 11.
    self.assertEqual(want['figures'][1], [11, 20])
    self.assertEqual(summary_figures(workdir), want['figures'])

  # Steps at which the run is killed: before and after the global
  # averaging of step 9 (the kill lands at the first step logged at or
  # after these; a checkpoint of that step or the one before is behind it).
  @parameterized.named_parameters(('before_global', 8),
                                  ('after_global', 12))
  def test_sigkill_then_resume_is_bit_identical(self, kill_step):
    want = reference(self)
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    proc = start(workdir)
    killed_at = stop_at(proc, workdir, kill_step, signal.SIGKILL)
    self.assertLess(killed_at, 20)
    launcher.finish(proc)
    self.assert_resumed_with_the_same_calls(finish(start(workdir)), want)
    self.assert_ends_as_the_uninterrupted_run(workdir, want)

  def test_sigkill_after_a_checkpoint_off_the_averaging_period(self):
    # Killed once checkpoint 14 is on disk: 14 is no multiple of K1 = 4,
    # one step into the period that ends with the global averaging after
    # step 17, and inside the final loss's window (11..20). A checkpoint
    # the run saved after it before the kill landed is removed: this
    # test's resume is from 14.
    want = reference(self)
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    saved = os.path.join(workdir, 'checkpoints')
    proc = start(workdir)
    launcher.wait_for(lambda: os.path.isdir(os.path.join(saved, '14')),
                      'checkpoint 14', [proc])
    proc.kill()
    launcher.finish(proc)
    for name in os.listdir(saved):
      if name.isdigit() and int(name) > 14:
        shutil.rmtree(os.path.join(saved, name))
    resumed_at = self.assert_resumed_with_the_same_calls(
        finish(start(workdir)), want)
    self.assertEqual(resumed_at, 14)
    self.assert_ends_as_the_uninterrupted_run(workdir, want)

  def test_sigterm_saves_and_exits_cleanly(self):
    want = reference(self)
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    proc = start(workdir)
    # The signal lands in the round of 1 or 2 steps after the row of step
    # 4 or a later one: the run stops at the end of that round.
    stopped_at = stop_at(proc, workdir, 4, signal.SIGTERM)
    stderr = launcher.finish(proc)
    self.assertEqual(proc.returncode, 0)
    self.assertIn('preempted: stopped by SIGTERM at step', stderr)
    self.assertNotIn('Traceback', stderr)
    steps = sorted(int(d) for d in os.listdir(
        os.path.join(workdir, 'checkpoints')) if d.isdigit())
    self.assertGreaterEqual(steps[-1], stopped_at)
    # It stopped where the uninterrupted run ends a round.
    self.assertIn(steps[-1], [c[0] for c in want['calls']])
    resumed_at = self.assert_resumed_with_the_same_calls(
        finish(start(workdir)), want)
    self.assertEqual(resumed_at, steps[-1])
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
    finish(start(workdir, '--config.train.steps=4',
                 '--config.train.log_every=1'))
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
                 '--config.train.log_every=1', '--config.train.eval_every=3',
                 '--config.opt.horizon_steps=4'))
    self.assertEqual([r['step'] for r in outputs.metrics_rows(workdir)],
                     [1, 2, 3, 4, 5, 6])


if __name__ == '__main__':
  absltest.main()


class OutageResumeTest(absltest.TestCase):

  def test_sigkill_inside_an_outage_then_resume_is_bit_identical(self):
    # Learner 3 down for steps 6..14, so the kill (at step 10) and the
    # checkpoint the run resumes from fall inside its outage; who is up
    # comes back from the checkpoint.
    run = [a for a in RUN if 'sync_warmup' not in a] + [
        '--config.faults.outages=((3, 6, 14), (5, 2, 4))']
    root = self.create_tempdir().full_path
    reference_dir, workdir = (os.path.join(root, 'reference'),
                              os.path.join(root, 'run'))
    want = calls(finish(launcher.start(reference_dir, *run)))
    proc = launcher.start(workdir, *run)
    self.assertLess(stop_at(proc, workdir, 10, signal.SIGKILL), 14)
    launcher.finish(proc)
    stderr = finish(launcher.start(workdir, *run))
    resumed_at = int(_RESUMED.search(stderr).group(1))
    self.assertGreater(resumed_at, 5)
    self.assertEqual(calls(stderr), [c for c in want if c[0] >= resumed_at])
    self.assertEqual(final_model_bytes(workdir),
                     final_model_bytes(reference_dir))
    self.assertEqual(outputs.summary(workdir)['lost_learner_steps'], 12)
    self.assertEqual(
        [(r['step'], r['train_loss']) for r in outputs.metrics_rows(workdir)],
        [(r['step'], r['train_loss'])
         for r in outputs.metrics_rows(reference_dir)])
