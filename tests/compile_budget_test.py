"""Compiled round programs per run: one per averaging level, plus a few."""

import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import pytest

from configs import cifar10, imagenet, mnist
from hier_avg import train
from hier_avg.core.schedule import hier_schedule
from tests.support import configs

# Each case trains a preset's cadences for a few hundred (tiny) steps.
pytestmark = pytest.mark.slow


def _shrunk(config):
  """`config`'s algorithm and cadences on tiny synthetic data and an mlp."""
  tiny = configs.tiny_config(1, config.opt.schedule)
  tiny.hier.update(config.hier)
  tiny.train.update(config.train)
  return tiny


class CompileBudgetTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('cifar10', cifar10, ''), ('cifar10_kavg', cifar10, 'kavg'),
      ('cifar10_sync', cifar10, 'sync'), ('cifar10_cpu', cifar10, 'cpu'),
      ('mnist', mnist, None))
  def test_preset_compiles_one_program_per_level_and_a_last_round(
      self, module, preset):
    config = _shrunk(module.get_config(preset))
    # Past the first evaluation, ending with a shorter round.
    config.train.steps = (config.train.eval_every +
                          config.hier.k1 * config.hier.k2 + 1)
    summary = train.train_and_evaluate(config, tempfile.mkdtemp())
    # Two averaging levels; the last round's length is one more program
    # (with K1 = 1 every round ends in the global averaging).
    self.assertLessEqual(summary['compiled_round_programs'], 3)

  def test_periods_off_the_averaging_grid_add_no_programs(self):
    # :kavg averages every 16 steps; logging every 50 and evaluating every
    # 70 cut rounds of 16, 2, 14, 4, ... steps (8 programs in 200 steps)
    # before the periods snapped to 48 and 64.
    config = _shrunk(cifar10.get_config('kavg'))
    config.train.update(steps=200, log_every=50, eval_every=70)
    summary = train.train_and_evaluate(config, tempfile.mkdtemp())
    self.assertLessEqual(summary['compiled_round_programs'], 3)

  def test_imagenet_cadences_and_stream_cap_fit_its_periods(self):
    # The streamed preset cannot run here; its arithmetic can be checked.
    config = imagenet.get_config()
    k1 = config.hier.k1
    for period in (config.train.log_every, config.train.eval_every,
                   config.train.checkpoint_every):
      self.assertEqual(period % k1, 0, period)
    schedule = hier_schedule(config.hier.k1, config.hier.k2)
    self.assertEqual(schedule.fit_cap(6), 0)  # The old 6-step cap.
    self.assertEqual(schedule.fit_cap(3), 2)


if __name__ == '__main__':
  absltest.main()
