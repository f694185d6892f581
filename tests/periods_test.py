"""Averaging periods that change over training: `hier.period_schedule`."""

import json
import math
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import chex
import numpy as np

from hier_avg import config_keys, train
from hier_avg.algorithms import hierarchical
from hier_avg.core import events
from hier_avg.core import periods
from hier_avg.core.hierarchy import Hierarchy
from hier_avg.core.periods import AdaptivePeriods, Phase, StepPeriods
from hier_avg.errors import UserError
from hier_avg.run import checkpoint
from tests.support import configs
from tests.support import devices
from tests.support import engines
from tests.support import outputs
from tests.support import reference
from tests.support import trees


def setUpModule():
  devices.set_up_devices()


# (warmup W, outer period, milestone steps, factors, phases): a change
# waits for the first outermost averaging at or after its milestone.
STEP_CASES = (
    (0, 4, (), (), ((0, 1),)),
    (0, 4, (8,), (2,), ((0, 1), (8, 2))),
    (0, 4, (7,), (2,), ((0, 1), (8, 2))),
    (2, 4, (7, 19), (2, 1), ((2, 1), (10, 2), (26, 1))),
    # Two milestones inside one outer period: the last of them wins.
    (0, 8, (3, 5), (2, 4), ((0, 1), (8, 4))),
    (0, 8, (3, 5), (2, 1), ((0, 1),)),
    # A milestone inside the warmup holds from the warmup's end.
    (5, 4, (2, 12), (4, 2), ((5, 4), (21, 2))),
    (0, 6, (0, 13), (3, 1), ((0, 3), (18, 1))),
)


def _hierarchy(warmup=0, pairs=((4, 2), (8, 4))):
  return engines.levels_hierarchy(pairs, sync_warmup=warmup)


def _scripted_adaptive(warmup=0, base=4, low=1, high=8):
  return AdaptivePeriods(warmup, base, low, high)


def _feed_window(controller, first, last, loss):
  """The steps first + 1..last each with mean loss `loss`, then the
  outermost averaging after `last`."""
  controller.add_losses((t, loss) for t in range(first + 1, last + 1))
  controller.after_outermost(last)


def _brute_force(schedule, steps):
  counts = {level.name: 0 for level in schedule.levels}
  for t in range(1, steps + 1):
    if (level := schedule.level_after(t)) is not None:
      counts[level.name] += 1
  return counts


class StepPeriodsTest(parameterized.TestCase):

  @parameterized.parameters(*STEP_CASES)
  def test_phases_start_at_the_next_outermost_averaging(
      self, warmup, outer, milestones, factors, expected):
    self.assertEqual(
        periods.step_phases(warmup, outer, milestones, factors),
        [Phase(*p) for p in expected])

  def test_milestones_in_epochs_become_steps_as_opt_milestones_do(self):
    config = configs.tiny_config(1)
    config.hier.update(period_schedule='step', period_milestones=(1.5,),
                       period_factors=(2,))
    controller = periods.from_config(config.hier, 0, 16, 10)
    self.assertEqual(controller.phases, (Phase(0, 1), Phase(16, 2)))
    config.hier.period_schedule = 'constant'
    self.assertIsNone(periods.from_config(config.hier, 0, 16, 10))


class AdaptivePeriodsTest(parameterized.TestCase):

  @parameterized.parameters(
      # (loss now, loss at start, base, low, high, multiplier)
      (2.0, 2.0, 4, 1, 8, 4),
      (1.0, 2.0, 4, 1, 8, 2),    # ceil(2.83) = 3 -> 2.
      (0.5, 2.0, 4, 1, 8, 2),    # ceil(2) = 2.
      (0.1, 2.0, 4, 1, 8, 1),    # ceil(0.89) = 1.
      (10.0, 2.0, 4, 1, 8, 8),   # ceil(8.94) = 9, clipped to 8.
      (0.01, 2.0, 4, 2, 8, 2),   # Clipped to the smallest.
      (1.8, 2.0, 8, 1, 8, 8),    # ceil(7.59) = 8.
      (1.5, 2.0, 8, 1, 16, 4),   # ceil(6.93) = 7 -> 4.
  )
  def test_multiplier_rule(self, now, start, base, low, high, expected):
    self.assertEqual(periods.adaptive_multiplier(now, start, base, low, high),
                     expected)

  def test_powers_of_two(self):
    self.assertEqual(periods.powers_of_two(1, 8), (1, 2, 4, 8))
    self.assertEqual(periods.powers_of_two(2, 2), (2,))
    self.assertEqual(periods.powers_of_two(4, 32), (4, 8, 16, 32))

  def test_scripted_losses_decide_the_phases(self):
    # Outer period 4 (levels (2, 4)), base 4: the first phase averages
    # globally every 16 steps. Window losses 2, 1, 0.5, 0.1, 10.
    controller = _scripted_adaptive()
    schedule = _hierarchy().schedule().with_periods(controller)
    _feed_window(controller, 0, 16, 2.0)    # Loss at start: 2 -> x4.
    _feed_window(controller, 16, 32, 1.0)   # -> x2 (every 8).
    _feed_window(controller, 32, 40, 0.5)   # -> x2, no new phase.
    _feed_window(controller, 40, 48, 0.1)   # -> x1 (every 4).
    _feed_window(controller, 48, 52, 10.0)  # -> x8 (every 32).
    self.assertEqual(controller.phases, (
        Phase(0, 4), Phase(32, 2), Phase(48, 1), Phase(52, 8)))
    self.assertEqual(controller.loss_at_start, 2.0)
    self.assertEqual([r.end for r in schedule.rounds(0, 90)],
                     [8, 16, 24, 32, 36, 40, 44, 48, 50, 52, 68, 84, 90])
    self.assertEqual(schedule.counts(90), _brute_force(schedule, 90))
    self.assertEqual(schedule.counts(90), {'local': 2 + 2 + 1 + 1,
                                           'global': 2 + 2 + 1 + 1})

  def test_the_warmups_losses_belong_to_no_phase(self):
    controller = _scripted_adaptive(warmup=3)
    controller.add_losses([(1, 100.0), (2, 100.0), (3, 100.0)])
    controller.after_outermost(3)
    self.assertIsNone(controller.loss_at_start)
    _feed_window(controller, 3, 19, 2.0)
    self.assertEqual(controller.loss_at_start, 2.0)
    self.assertEqual(controller.phases, (Phase(3, 4),))

  def test_a_restored_record_takes_the_same_decisions(self):
    straight = _scripted_adaptive()
    _feed_window(straight, 0, 16, 2.0)
    straight.add_losses([(17, 1.3), (18, 0.7)])
    resumed = _scripted_adaptive()
    # Through JSON, as checkpoints keep it: floats round-trip exactly.
    resumed.restore(json.loads(json.dumps(straight.record())))
    for controller in (straight, resumed):
      _feed_window(controller, 18, 32, 0.9)
      _feed_window(controller, 32, 40, 0.05)
    self.assertEqual(resumed.phases, straight.phases)
    self.assertEqual(resumed.record(), straight.record())
    self.assertLen(straight.phases, 3)

  def test_non_finite_losses_keep_the_periods(self):
    controller = _scripted_adaptive()
    _feed_window(controller, 0, 16, 2.0)
    _feed_window(controller, 16, 32, math.nan)
    self.assertEqual(controller.phases, (Phase(0, 4),))


class PhasedScheduleTest(parameterized.TestCase):

  @parameterized.product(case=STEP_CASES, pairs=(((4, 1), (8, 2)),
                                                 ((2, 1), (4, 2), (8, 6))),
                         steps=(0, 30, 61), cut=(0, 3))
  def test_counts_and_rounds_agree_with_level_after(self, case, pairs,
                                                    steps, cut):
    warmup, _, milestones, factors, _ = case
    outer = pairs[-1][1]
    schedule = _hierarchy(warmup, pairs).schedule().with_periods(
        StepPeriods(warmup, outer, milestones, factors))
    self.assertEqual(schedule.counts(steps), _brute_force(schedule, steps))
    rounds = list(schedule.rounds(0, steps, (cut,)))
    ends = [r.end for r in rounds]
    averagings = {t for t in range(1, steps + 1) if schedule.level_after(t)}
    self.assertTrue(averagings <= set(ends))
    self.assertEqual(ends, sorted(set(ends)))
    self.assertEqual(ends[-1:], [steps] if steps else [])
    for r in rounds:
      self.assertEqual(r.level, schedule.level_after(r.end))
    # Every phase starts with an outermost averaging: all learners equal.
    for phase in schedule.phases[1:]:
      self.assertEqual(schedule.level_after(phase.start),
                       schedule.levels[-1])

  def test_levels_scale_together_from_the_phase_start(self):
    schedule = _hierarchy(2).schedule().with_periods(
        StepPeriods(2, 4, (7,), (3,)))
    # Phase 1 from step 10, periods (6, 12) counted from there.
    names = {t: getattr(schedule.level_after(t), 'name', None)
             for t in range(1, 35)}
    self.assertEqual([t for t, n in names.items() if n == 'local'],
                     [4, 8, 16, 28])
    self.assertEqual([t for t, n in names.items() if n == 'global'],
                     [1, 2, 6, 10, 22, 34])

  def test_a_phase_added_while_training_reshapes_the_next_rounds(self):
    controller = _scripted_adaptive(base=1)
    schedule = _hierarchy().schedule().with_periods(controller)
    ends = []
    for r in schedule.rounds(0, 24):
      ends.append(r.end)
      if r.end == 4:
        controller.add_losses((t, 4.0) for t in range(1, 5))
        controller.after_outermost(4)   # Loss at start 4: x1.
      if r.end == 8:
        controller.add_losses((t, 16.0) for t in range(5, 9))
        controller.after_outermost(8)   # sqrt(4) * 1 = 2: x2.
    self.assertEqual(ends, [2, 4, 6, 8, 12, 16, 20, 24])
    self.assertEqual(controller.phases, (Phase(0, 1), Phase(8, 2)))

  def test_round_kinds_stay_few_whatever_the_losses(self):
    # Each (level, length) kind of round is one compiled program. Losses
    # that move the multiplier over its whole range, rows every 4 steps.
    rng = np.random.default_rng(0)
    controller = _scripted_adaptive(base=8)  # x1, x2, x4, x8.
    schedule = _hierarchy(pairs=((4, 1), (8, 2))).schedule().with_periods(
        controller)
    kinds, last = set(), 0
    for r in schedule.rounds(0, 3000, (4,)):
      kinds.add((getattr(r.level, 'name', None), r.length))
      if r.level == schedule.levels[-1]:
        loss = 1.0 if not last else math.exp(rng.uniform(-5, 1))
        _feed_window(controller, last, r.end, loss)
        last = r.end
    self.assertGreater(len(controller.phases), 50)
    self.assertEqual({p.multiplier for p in controller.phases}, {1, 2, 4, 8})
    self.assertLessEqual(len(kinds), 2 * 4 + 2)

  def test_caps_divide_every_phases_period(self):
    for multipliers in ((1, 2, 4, 8), (2, 4)):
      controller = AdaptivePeriods(0, multipliers[-1], multipliers[0],
                                   multipliers[-1])
      schedule = _hierarchy(pairs=((4, 4), (8, 8))).schedule().with_periods(
          controller)
      for cap in range(1, 40):
        fitted = schedule.fit_cap(cap)
        self.assertLessEqual(fitted, cap)
        for m in multipliers:
          k = 4 * m
          if fitted:
            self.assertEqual(k % fitted, 0, (cap, fitted, m))
          else:
            self.assertGreaterEqual(cap, k)

  def test_constant_is_the_plain_schedule(self):
    config = configs.tiny_config(1)
    hierarchy = Hierarchy.from_config(config.hier)
    self.assertIsNone(periods.from_config(config.hier, 0, 16, 10))
    plain = hierarchy.schedule()
    self.assertIsNone(plain.periods)
    self.assertEqual(plain.phases, (Phase(0, 1),))


class ConfigTest(parameterized.TestCase):

  @parameterized.parameters(
      (dict(period_milestones=(10,), period_factors=()), 'one factor per'),
      (dict(period_milestones=(20, 10), period_factors=(2, 4)),
       'increasing'),
      (dict(period_factors=(0,), period_milestones=(1,)), 'integers >= 1'),
      (dict(adaptive_base=3), 'power of two'),
      (dict(adaptive_base=16), r'\[hier.adaptive_min'),
      (dict(algorithm='asgd', period_schedule='step'),
       "period_schedule 'constant'"),
      (dict(period_schedule='linear'), 'unknown hier.period_schedule'),
  )
  def test_refused(self, overrides, message):
    config = configs.tiny_config(1)
    config.hier.update(overrides)
    with self.assertRaisesRegex(UserError, message):
      config_keys.validate(config)


class StepOracleTest(absltest.TestCase):

  def test_matches_the_reference_given_the_same_levels(self):
    # Levels (4, 2), (8, 4), W = 2; x2 from step 5 (-> 6), x1 from 11
    # (-> 14).
    warmup, steps = 2, 18
    starts = ((2, 1), (6, 2), (14, 1))
    data = engines.tiny_data()
    learner = engines.make_learner('bn', data, nesterov=True)
    engine = engines.make_levels_engine(learner, _hierarchy(warmup), (2, 4))
    engine.algorithm = hierarchical.with_periods(
        engine.algorithm, StepPeriods(warmup, 4, (5, 11), (2, 1)))
    self.assertEqual(engine.schedule.phases,
                     tuple(Phase(*p) for p in starts))
    sampler = engines.make_sampler(data, 8)
    init = engine.init_state(0, data.image_shape)
    ref_learners = engines.learner_states(init)
    final = engines.run_engine(engine, data, sampler, steps, state=init)
    reference.run(learner, ref_learners, reference.nested_levels(
        8, ((4, 2), (8, 4))), ('params', 'batch_stats'), data.train_images,
                  data.train_labels, sampler, steps, phases=starts,
                  sync_warmup=warmup)
    got = engines.learner_states(final)
    for i in range(8):
      for part in ('params', 'batch_stats', 'opt_state'):
        trees.assert_trees_close(got[i][part], ref_learners[i][part])
    # The counters: 2 warmup + 1 + 1 + 1 global, 1 + 1 + 1 local.
    self.assertEqual(engine.schedule.counts(steps),
                     {'local': 3, 'global': 5})


def _adaptive_config(steps):
  c = configs.tiny_config(steps)
  # Global averaging every 2 steps times x8, x4, x2 or x1; a small lr so
  # that the loss falls over several outer periods.
  c.hier.update(k1=1, k2=2, period_schedule='adaptive', adaptive_base=8,
                adaptive_min=1, adaptive_max=8)
  c.opt.lr = 0.003
  c.train.update(log_every=4, checkpoint_every=0)
  return c


def _final_record(workdir, step):
  """The JSON record of the checkpoint at `step` (orbax's JsonSave)."""
  with open(os.path.join(workdir, checkpoint.CHECKPOINT_DIR, str(step),
                         'record', 'metadata')) as f:
    return json.load(f)


class StepRunTest(absltest.TestCase):

  def test_milestones_in_epochs_reach_the_summary_and_counters(self):
    c = configs.tiny_config(36)
    # 512 examples, P = 8, B = 8: 8 steps an epoch; epoch 2.5 is step 20,
    # an outermost averaging (every 2 steps), from where x4.
    c.hier.update(k1=1, k2=2, period_schedule='step',
                  period_milestones=(2.5,), period_factors=(4,))
    summary = train.train_and_evaluate(c, tempfile.mkdtemp())
    self.assertEqual(summary['period_phases'], [[0, 1], [20, 4]])
    # 10 + 10 before step 20; then local at 24, 32 and global at 28, 36.
    self.assertEqual(summary['local_averagings'], 12)
    self.assertEqual(summary['global_averagings'], 12)


class AdaptiveRunTest(absltest.TestCase):
  """A small end-to-end adaptive run, straight and stopped mid-phase."""

  def test_resumes_to_the_same_periods_and_model(self):
    steps = 40
    straight = tempfile.mkdtemp()
    whole = train.train_and_evaluate(_adaptive_config(steps), straight)
    phases = whole['period_phases']
    # The loss falls: the periods shrink from x8 (every 16 steps).
    self.assertEqual(phases[0], [0, 8])
    self.assertGreater(len(phases), 1)
    self.assertLess(phases[-1][1], 8)
    # The counters follow the phases.
    schedule = Hierarchy.from_config(
        _adaptive_config(steps).hier).schedule().with_periods(
            periods.PeriodController([Phase(*p) for p in phases]))
    brute = _brute_force(schedule, steps)
    self.assertEqual(whole['local_averagings'], brute['local'])
    self.assertEqual(whole['global_averagings'], brute['global'])
    # Compiled round programs: a few per allowed multiplier (x1, x2, x4,
    # x8) and level, however many phases.
    self.assertLessEqual(whole['compiled_round_programs'], 2 * 4 + 2)

    # Stopped at step 28, inside the second outer period of x8 (its 12
    # losses so far are in the checkpoint), then resumed. 28 ends a round
    # of the straight run too (rows every 4 steps), so both make the same
    # compiled calls and the models must agree to the last bit.
    resumed = tempfile.mkdtemp()
    train.train_and_evaluate(_adaptive_config(28), resumed)
    self.assertEqual(_final_record(resumed, 28)['periods']['window'][1], 12)
    again = train.train_and_evaluate(_adaptive_config(steps), resumed)
    self.assertEqual(again['resumed_from_step'], 28)
    self.assertEqual(again['period_phases'], phases)
    self.assertEqual(_final_record(resumed, steps)['periods'],
                     _final_record(straight, steps)['periods'])
    for name in ('local_averagings', 'global_averagings'):
      self.assertEqual(again[name], whole[name])
    chex.assert_trees_all_equal(
        outputs.final_model(resumed),
        outputs.final_model(straight))

  def test_phases_start_after_whole_outermost_periods_with_fragments(self):
    # The global level in 2 fragments (after 1 and 2 of each period of 2
    # at x1), compressed with error feedback: a phase may start only
    # after its last fragment, never half way through a period.
    config = _adaptive_config(64)
    config.hier.update(fragments=(1, 2), compress=('none', 'int8'),
                       error_feedback=(False, True))
    summary = train.train_and_evaluate(config, tempfile.mkdtemp())
    phases = summary['period_phases']
    self.assertGreater(len(phases), 1)
    for (start, multiplier), (after, _) in zip(phases, phases[1:]):
      self.assertEqual((after - start) % (2 * multiplier), 0, phases)
    # The counters are the events of those phases.
    schedule = Hierarchy.from_config(config.hier).schedule().with_fragments(
        (1, 2)).with_periods(periods.PeriodController(
            [Phase(*p) for p in phases]))
    for name, count in schedule.counts(64).items():
      self.assertEqual(summary[f'{name}_averagings'], count, name)
    self.assertEqual(sum(len(events.applied_after(schedule, t))
                         for t in range(1, 65)),
                     summary['local_averagings'] +
                     summary['global_averagings'])


if __name__ == '__main__':
  absltest.main()
