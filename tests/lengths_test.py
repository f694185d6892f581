"""A run's length on resume (its lr curve), and inputs checked up front."""

import os
import tempfile

from absl.testing import absltest

from hier_avg import train
from hier_avg.errors import UserError
from hier_avg.run import metrics
from tests.support import devices
from tests.support.configs import tiny_config


def setUpModule():
  devices.set_up_devices()


def learning_rates(workdir: str) -> dict[int, float]:
  return {row['step']: row['learning_rate']
          for row in metrics.read_rows(os.path.join(workdir, metrics.METRICS_FILE))
          if 'learning_rate' in row}


class LengthsTest(absltest.TestCase):

  def test_cosine_run_extended_keeps_its_curve_only_when_asked(self):
    workdir = tempfile.mkdtemp()
    train.train_and_evaluate(tiny_config(8, 'cosine'), workdir)
    before = learning_rates(workdir)
    self.assertLess(before[8], 0.1 * before[4])  # Its last step: near 0.
    with self.assertRaisesRegex(UserError, 'decays its cosine learning rate '
                                'over 8 steps; this run is 16 steps long'):
      train.train_and_evaluate(tiny_config(16, 'cosine'), workdir)
    self.assertEqual(learning_rates(workdir), before)  # Nothing written.

    kept = tiny_config(16, 'cosine')
    kept.opt.horizon_steps = 8
    summary = train.train_and_evaluate(kept, workdir)
    self.assertEqual(summary['steps'], 16)
    after = learning_rates(workdir)
    self.assertEqual({s: after[s] for s in before}, before)
    self.assertEqual([after[s] for s in (12, 16)], [0.0, 0.0])

  def test_constant_schedule_may_grow(self):
    workdir = tempfile.mkdtemp()
    train.train_and_evaluate(tiny_config(8, 'constant'), workdir)
    summary = train.train_and_evaluate(tiny_config(12, 'constant'), workdir)
    self.assertEqual(summary['resumed_from_step'], 8)
    self.assertEqual(summary['steps'], 12)

  def test_shorter_than_the_checkpoint_is_refused(self):
    workdir = tempfile.mkdtemp()
    train.train_and_evaluate(tiny_config(8, 'constant'), workdir)
    with self.assertRaisesRegex(UserError, 'already reached step 8, past '
                                "this run's length of 4 steps"):
      train.train_and_evaluate(tiny_config(4, 'constant'), workdir)

  def test_finished_run_rerun_returns_its_summary(self):
    workdir = tempfile.mkdtemp()
    first = train.train_and_evaluate(tiny_config(8, 'cosine'), workdir)
    again = train.train_and_evaluate(tiny_config(8, 'cosine'), workdir)
    self.assertEqual(again['final_train_loss'], first['final_train_loss'])
    # Its summary deleted: the rerun says so instead of pointing to it.
    os.remove(os.path.join(workdir, metrics.SUMMARY_FILE))
    with self.assertLogs(level='WARNING') as logs:
      self.assertEqual(
          train.train_and_evaluate(tiny_config(8, 'cosine'), workdir), {})
    self.assertIn('already finished its 8 steps, but its summary.json is '
                  'gone; its rows are in metrics.jsonl', logs.output[0])


class InputTest(absltest.TestCase):

  def test_images_too_small_for_the_model_are_refused_before_the_workdir(
      self):
    config = tiny_config(8, 'constant')
    config.model.name = 'cnn_small'  # Three 2x2 max-pools.
    config.data.synthetic_image_size = 4
    workdir = os.path.join(tempfile.mkdtemp(), 'run')
    with self.assertRaisesRegex(UserError, "model.name='cnn_small' cannot "
                                r'take images of shape \(4, 4, 3\)'):
      train.train_and_evaluate(config, workdir)
    self.assertFalse(os.path.exists(workdir))


  def test_examples_left_out_of_each_pass_are_said_and_not_counted(self):
    config = tiny_config(8, 'constant')
    # P = 8, B = 8: shards of 62, 7 steps per pass, 448 of 500 examples.
    config.data.synthetic_train_examples = 500
    with self.assertLogs('absl', 'WARNING') as logs:
      summary = train.train_and_evaluate(config, tempfile.mkdtemp())
    self.assertTrue(any('uses 448 of its 500 examples (52, 10.4%' in line
                        for line in logs.output), logs.output)
    self.assertEqual(summary['epochs'], 8 * 64 / 500)


if __name__ == '__main__':
  absltest.main()
