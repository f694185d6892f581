"""The final training loss: one window of steps, whatever the cadence."""

import json
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
    window = LossWindow(4)
    for step in range(1, 11):
      window.add(step, np.full((2, 4), step, np.float32))
    self.assertEqual((window.steps, window.mean), ([7, 10], 8.5))

  def test_a_short_run_averages_every_step(self):
    window = LossWindow(8)
    for step in (1, 2, 3):
      window.add(step, np.array([step, step + 1.0]))
    self.assertEqual((window.steps, window.mean), ([1, 3], 2.5))
    self.assertEqual(LossWindow(8).steps, [])
    self.assertTrue(np.isnan(LossWindow(8).mean))

  def test_a_checkpoints_record_goes_on_exactly(self):
    # Saved at 8, resumed: the same window as a run never stopped, and as
    # one lengthened on resume (its last steps are the record's and the
    # new ones).
    straight, before = LossWindow(4), LossWindow(4)
    for step in range(1, 9):
      for window in (straight, before):
        window.add(step, np.array([step, step / 3]))
    record = json.loads(json.dumps(before.record()))  # As checkpoints hold it.
    resumed = LossWindow(4, record)
    for step in (9, 10):
      for window in (straight, resumed):
        window.add(step, np.array([step, step / 3]))
    self.assertEqual(resumed.steps, [7, 10])
    self.assertEqual(resumed.mean, straight.mean)  # To the last bit.


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
    summary = train.train_and_evaluate(configs.tiny_config(12), workdir)
    rows = {r['step']: r['train_loss']
            for r in outputs.metrics_rows(workdir)}
    np.testing.assert_allclose(summary['final_train_loss'],
                               (rows[8] + rows[12]) / 2, rtol=1e-6)

  def test_a_run_lengthened_on_resume_averages_the_same_steps(self):
    # Stopped at 8 (its own window 1..8), lengthened to 12: steps 5..8
    # come from the checkpoint, 9..12 from the resumed run. Both runs cut
    # their rounds at multiples of 4: the same calls, so the same bits.
    straight = self.run_with()
    workdir = tempfile.mkdtemp()
    train.train_and_evaluate(configs.tiny_config(8), workdir)
    resumed = train.train_and_evaluate(configs.tiny_config(12), workdir)
    self.assertEqual(resumed['resumed_from_step'], 8)
    self.assertEqual(resumed['final_train_loss_steps'], [5, 12])
    self.assertEqual(resumed['final_train_loss'],
                     straight['final_train_loss'])


if __name__ == '__main__':
  absltest.main()
