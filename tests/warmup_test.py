"""Synchronous warmup (post-local SGD): `hier.sync_warmup_steps`."""

import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import chex

from hier_avg import config_keys, train
from hier_avg.core.hierarchy import Hierarchy
from hier_avg.core.schedule import Schedule
from hier_avg.errors import UserError
from tests.support import configs
from tests.support import devices
from tests.support import engines
from tests.support import outputs
from tests.support import reference
from tests.support import trees


def setUpModule():
  devices.set_up_devices()


def _schedule(k1, k2, warmup) -> Schedule:
  return Hierarchy(8, (4, 8), (k1, k1 * k2), warmup).schedule()


class WarmupScheduleTest(parameterized.TestCase):

  def test_warmup_steps_average_globally_then_periods_count_from_w(self):
    schedule = _schedule(4, 2, 5)
    names = [getattr(schedule.level_after(t), 'name', None)
             for t in range(1, 15)]
    self.assertEqual(names, ['global'] * 5 + [None] * 3 + ['local'] +
                     [None] * 3 + ['global', None])

  @parameterized.product(k1=(1, 2, 3), k2=(1, 2), warmup=(0, 1, 4, 5),
                         steps=(0, 3, 5, 11, 20))
  def test_counts_and_rounds_agree_with_level_after(self, k1, k2, warmup,
                                                    steps):
    schedule = _schedule(k1, k2, warmup)
    brute = {'local': 0, 'global': 0}
    for t in range(1, steps + 1):
      if (level := schedule.level_after(t)) is not None:
        brute[level.name] += 1
    self.assertEqual(schedule.counts(steps), brute)
    # Rounds end at every averaging, and only there (besides the stop).
    ends = [r.end for r in schedule.rounds(0, steps)]
    self.assertEqual(ends, sorted(
        {t for t in range(1, steps + 1) if schedule.level_after(t)} |
        ({steps} if steps else set())))
    for r in schedule.rounds(0, steps):
      self.assertEqual(r.level, schedule.level_after(r.end))

  def test_asgd_refuses_a_warmup(self):
    config = configs.tiny_config(1)
    config.hier.update(algorithm='asgd', sync_warmup_steps=4)
    with self.assertRaisesRegex(UserError, 'sync_warmup_steps 0'):
      config_keys.validate(config)


class WarmupOracleTest(absltest.TestCase):

  def test_matches_reference(self):
    warmup, steps = 5, 14
    data = engines.tiny_data()
    learner = engines.make_learner('bn', data, nesterov=True)
    hierarchy = Hierarchy(8, (4, 8), (2, 6), warmup)
    engine = engines.make_levels_engine(learner, hierarchy, (2, 4))
    sampler = engines.make_sampler(data, 8)
    init = engine.init_state(0, data.image_shape)
    ref_learners = engines.learner_states(init)
    final = engines.run_engine(engine, data, sampler, steps, state=init)
    reference.run(learner, ref_learners, reference.hier_levels(8, 4, 2, 3),
                  ('params', 'batch_stats'), data.train_images,
                  data.train_labels, sampler, steps, sync_warmup=warmup)
    got = engines.learner_states(final)
    for i in range(8):
      for part in ('params', 'batch_stats', 'opt_state'):
        trees.assert_trees_close(got[i][part], ref_learners[i][part])


class WarmupResumeTest(absltest.TestCase):

  def test_a_run_stopped_inside_the_warmup_resumes_exactly(self):
    def config(steps):
      c = configs.tiny_config(steps)
      c.hier.update(k1=2, k2=2, sync_warmup_steps=5)
      # Rounds of one step: the stopped and the straight run make the
      # same compiled calls, so the models must agree to the last bit.
      c.train.update(log_every=1, checkpoint_every=0)
      return c

    straight = tempfile.mkdtemp()
    whole = train.train_and_evaluate(config(12), straight)
    resumed = tempfile.mkdtemp()
    train.train_and_evaluate(config(3), resumed)
    again = train.train_and_evaluate(config(12), resumed)
    self.assertEqual(again['resumed_from_step'], 3)
    chex.assert_trees_all_equal(
        outputs.final_model(resumed),
        outputs.final_model(straight))
    # 5 warmup steps and 1 global averaging at 5 + 4: 6 global in all.
    self.assertEqual(whole['global_averagings'], 6)
    self.assertEqual(again['local_averagings'], whole['local_averagings'])


if __name__ == '__main__':
  absltest.main()
