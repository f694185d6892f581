"""Averaging events (`core/events.py`) against the schedule's answers."""

from absl.testing import absltest
from absl.testing import parameterized

from hier_avg.core import events
from hier_avg.core.hierarchy import Hierarchy
from hier_avg.core.periods import StepPeriods


def _schedule(levels=((2, 2), (8, 6)), warmup=0, delay=(), fragments=()):
  sizes, periods = zip(*levels)
  return (Hierarchy(8, sizes, periods, warmup).schedule()
          .with_delays(delay).with_fragments(fragments))


class EventsTest(parameterized.TestCase):

  @parameterized.product(warmup=(0, 3), levels=(((2, 2), (8, 6)),
                                                ((2, 1), (4, 2), (8, 8))))
  def test_one_event_per_averaging_the_widest_wins(self, warmup, levels):
    schedule = _schedule(levels, warmup)
    for step in range(1, 40):
      level = schedule.level_after(step)
      got = events.applied_after(schedule, step)
      if step <= warmup or level is None:
        self.assertEqual(got, ())
      else:
        self.assertEqual(got, (events.Event(level, 0, step, step),))

  def test_fragments_apply_at_their_offsets(self):
    # Warmup 2; local: period 4, 2 fragments after steps 2 and 4 of each
    # period; global: period 12, 3 fragments after 4, 8 and 12. A
    # fragmented level hides nothing: the local level goes on averaging.
    schedule = _schedule(((2, 4), (8, 12)), 2, fragments=(2, 3))
    want = {4: [('local', 0)], 6: [('local', 1), ('global', 0)],
            8: [('local', 0)], 10: [('local', 1), ('global', 1)],
            12: [('local', 0)], 14: [('local', 1), ('global', 2)],
            16: [('local', 0)], 18: [('local', 1), ('global', 0)]}
    for step in range(3, 19):
      got = events.applied_after(schedule, step)
      self.assertEqual([(e.level.name, e.fragment) for e in got],
                       want.get(step, []), step)
      self.assertTrue(all(e.start == e.apply == step for e in got))

  def test_a_late_event_starts_tau_steps_before(self):
    schedule = _schedule(((2, 4), (8, 12)), 1, delay=(1, 3))
    local, global_ = schedule.levels
    self.assertEqual(events.applied_after(schedule, 13),
                     (events.Event(global_, 0, 10, 13),))
    self.assertEqual(events.started_after(schedule, 10),
                     (events.Event(global_, 0, 10, 13),))
    self.assertEqual(events.started_after(schedule, 4),
                     (events.Event(local, 0, 4, 5),))
    # Every late event starts once, tau steps before it applies.
    for step in range(1, 60):
      for event in events.applied_after(schedule, step):
        self.assertIn(event, events.started_after(schedule, event.start))

  def test_phases_scale_the_periods(self):
    schedule = _schedule(((2, 2), (8, 4))).with_periods(
        StepPeriods(0, 4, (1,), (2,)))
    # x2 from the first global averaging at or after step 4: local every
    # 4 steps from there, global every 8.
    got = {step: [e.level.name for e in events.applied_after(schedule, step)]
           for step in range(1, 21)}
    self.assertEqual({s: n for s, n in got.items() if n},
                     {2: ['local'], 4: ['global'], 8: ['local'],
                      12: ['global'], 16: ['local'], 20: ['global']})


if __name__ == '__main__':
  absltest.main()
