"""The final training loss: one window of steps, whatever the cadence."""

import tempfile

from absl.testing import absltest
import numpy as np

from hier_avg import train
from hier_avg.run.progress import LossWindow
from tests.support import configs
from tests.support import devices
from tests.support import outputs


def setUpModule():
  devices.set_up_devices()


class LossWindowTest(absltest.TestCase):

  def test_the_last_steps_only_in_float64(self):
    window = LossWindow.final(num_steps=10, window=4)
    self.assertEqual(window.first, 7)
    for step in range(1, 11):
      window.add(step, np.full((2, 4), step, np.float32))
    self.assertEqual((window.steps, window.mean), (4, 8.5))

  def test_a_short_run_averages_every_step(self):
    self.assertEqual(LossWindow.final(num_steps=3, window=8).first, 1)

  def test_a_record_of_the_same_window_goes_on_from_its_sum(self):
    before = LossWindow.final(10, 4)
    for step in range(1, 9):
      before.add(step, np.array([step, step + 1.0]))
    resumed = LossWindow.final(10, 4, resumed_at=8, record=before.record())
    for window in (before, resumed):
      for step in (9, 10):
        window.add(step, np.array([step, step + 1.0]))
    self.assertEqual(resumed, before)
    self.assertEqual(resumed.mean, np.mean([7.5, 8.5, 9.5, 10.5]))

  def test_a_record_of_another_window_is_not_reused(self):
    # The run was 10 steps long when saved at 8, its window 3..10; now 12,
    # window 5..12: the saved sum covers steps 3 and 4 too, so the window
    # starts after the checkpoint and says so.
    old = LossWindow.final(10, 8)
    for step in range(1, 9):
      old.add(step, np.array([1.0]))
    resumed = LossWindow.final(12, 8, resumed_at=8, record=old.record())
    self.assertEqual((resumed.first, resumed.steps), (9, 0))
    self.assertTrue(np.isnan(resumed.mean))

  def test_a_longer_run_with_the_same_first_step_goes_on(self):
    # Saved at 8 by a 10-step run whose window is 7..10; a 12-step run
    # whose window is 6 steps long starts at 7 too: the saved sum of steps
    # 7 and 8 is what it needs.
    old = LossWindow.final(10, 4)
    for step in range(1, 9):
      old.add(step, np.array([float(step)]))
    longer = LossWindow.final(12, 6, resumed_at=8, record=old.record())
    self.assertEqual((longer.first, longer.steps, longer.total), (7, 2, 15.0))


class FinalTrainLossTest(absltest.TestCase):
  """512 examples, P = 8, B = 8: 8 steps an epoch; 12 steps."""

  def run_with(self, **train_overrides):
    config = configs.tiny_config(12)
    config.train.update(train_overrides)
    return train.train_and_evaluate(config, tempfile.mkdtemp())

  def test_the_last_epoch_whatever_the_logging_cadence(self):
    every_4 = self.run_with(log_every=4)
    every_2 = self.run_with(log_every=2)
    self.assertEqual(every_4['final_train_loss_steps'], [5, 12])
    self.assertEqual(every_2['final_train_loss_steps'], [5, 12])
    # Rounds cut at 2 instead of 4 are other programs: float32 rounding.
    np.testing.assert_allclose(every_2['final_train_loss'],
                               every_4['final_train_loss'], rtol=1e-6)

  def test_it_is_the_mean_of_the_window_rows(self):
    # Rows every 4 steps: the window 5..12 is the rows of 8 and 12.
    workdir = tempfile.mkdtemp()
    config = configs.tiny_config(12)
    summary = train.train_and_evaluate(config, workdir)
    rows = {r['step']: r['train_loss']
            for r in outputs.metrics_rows(workdir)}
    np.testing.assert_allclose(summary['final_train_loss'],
                               (rows[8] + rows[12]) / 2, rtol=1e-6)

  def test_a_longer_run_names_the_steps_it_averaged(self):
    workdir = tempfile.mkdtemp()
    train.train_and_evaluate(configs.tiny_config(8), workdir)
    summary = train.train_and_evaluate(configs.tiny_config(12), workdir)
    # The 8-step run's window was steps 1..8; the 12-step run's is 5..12,
    # of which only 9..12 ran after the checkpoint.
    self.assertEqual(summary['final_train_loss_steps'], [9, 12])
    self.assertTrue(np.isfinite(summary['final_train_loss']))


if __name__ == '__main__':
  absltest.main()
