"""Log, evaluation and checkpoint periods: snapped so rounds keep one length."""

from absl.testing import absltest
from absl.testing import parameterized
import ml_collections

from hier_avg.core.schedule import hier_schedule
from hier_avg.run.cadence import Cadence, snap


def _train_config(log_every, eval_every=0, checkpoint_every=0):
  return ml_collections.ConfigDict(dict(
      log_every=log_every, eval_every=eval_every,
      checkpoint_every=checkpoint_every))


class SnapTest(parameterized.TestCase):

  @parameterized.parameters(
      (50, 16, 48),   # The :kavg case: nearest multiple of K.
      (56, 16, 64),   # A tie (3.5 K) rounds up.
      (5, 16, 16),    # Below K: at least one period.
      (8, 16, 8),     # Divides K: kept (rows inside a period).
      (1, 16, 1),
      (64, 16, 64),   # A multiple: kept.
      (0, 16, 0),     # 0 (never) stays never.
      (7, 1, 7),      # K = 1 (sync SGD): everything is a multiple.
  )
  def test_snap(self, period, k, expected):
    self.assertEqual(snap(period, k), expected)

  def test_from_config_snaps_each_period_and_says_which(self):
    config = _train_config(log_every=50, eval_every=100, checkpoint_every=8)
    cadence = Cadence.from_config(config, 1000, averaging_period=16)
    self.assertEqual(cadence.cut_every, (48, 96, 8))
    self.assertEqual(cadence.snapped_from(config),
                     ['train.log_every=50 -> 48',
                      'train.eval_every=100 -> 96'])

  def test_snapped_periods_give_rounds_of_one_length(self):
    # Every period of 1..40 (log, eval and checkpoint at once) with K1 in
    # 1..12: the rounds before the last have a single length.
    for k1 in range(1, 13):
      schedule = hier_schedule(k1, 3)
      for log_every in range(1, 41):
        config = _train_config(log_every, log_every + 1, 2 * log_every + 3)
        cadence = Cadence.from_config(config, 500, schedule.shortest_period)
        rounds = list(schedule.rounds(0, 500, cadence.cut_every))[:-1]
        lengths = {r.length for r in rounds}
        self.assertLen(lengths, 1, (k1, log_every, cadence, lengths))


if __name__ == '__main__':
  absltest.main()
