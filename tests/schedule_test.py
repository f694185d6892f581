"""When each averaging happens and how many happened."""

from absl.testing import absltest
from absl.testing import parameterized

from hier_avg.core.schedule import Level, Schedule, hier_schedule

# (k1, k2, steps, local averagings, global averagings)
COUNT_CASES = (
    (4, 4, 0, 0, 0),
    (4, 4, 3, 0, 0),
    (4, 4, 4, 1, 0),
    (4, 4, 16, 3, 1),
    (4, 4, 33, 6, 2),
    (1, 1, 10, 0, 10),   # Sync SGD: every step is a global averaging.
    (3, 1, 10, 0, 3),    # K2 = 1: K-AVG with K = K1.
    (1, 5, 12, 10, 2),
)


class ScheduleTest(parameterized.TestCase):

  @parameterized.parameters(*COUNT_CASES)
  def test_counts_match_brute_force(self, k1, k2, steps, local, global_):
    schedule = hier_schedule(k1, k2)
    self.assertEqual(schedule.counts(steps),
                     {'local': local, 'global': global_})
    seen = [schedule.level_after(t) for t in range(1, steps + 1)]
    self.assertEqual(sum(l is not None and l.name == 'local' for l in seen),
                     local)
    self.assertEqual(sum(l is not None and l.name == 'global' for l in seen),
                     global_)

  def test_level_after(self):
    schedule = hier_schedule(2, 3)
    names = [getattr(schedule.level_after(t), 'name', None)
             for t in range(1, 13)]
    self.assertEqual(names, [None, 'local', None, 'local', None, 'global',
                             None, 'local', None, 'local', None, 'global'])

  def test_global_averages_every_axis(self):
    local, global_ = hier_schedule(2, 2).levels
    self.assertEqual(local.axes, ('local',))
    self.assertEqual(global_.axes, ('node', 'local'))

  def test_three_levels(self):
    schedule = Schedule((Level('local', ('local',), 2),
                         Level('pod', ('node', 'local'), 4),
                         Level('global', ('pod', 'node', 'local'), 8)))
    self.assertEqual(schedule.counts(16),
                     {'local': 4, 'pod': 2, 'global': 2})
    self.assertEqual(schedule.level_after(12).name, 'pod')

  def test_rounds_end_at_averagings_cuts_and_stop(self):
    schedule = hier_schedule(4, 2)
    rounds = list(schedule.rounds(2, 19, cut_every=(6,)))
    self.assertEqual([(r.first, r.length) for r in rounds],
                     [(2, 2), (4, 2), (6, 2), (8, 4), (12, 4), (16, 2),
                      (18, 1)])
    self.assertEqual([getattr(r.level, 'name', None) for r in rounds],
                     ['local', None, 'global', 'local', 'global', None,
                      None])

  def test_rounds_of_one_step(self):
    schedule = hier_schedule(2, 2)
    rounds = list(schedule.rounds(0, 8, cut_every=(1,)))
    self.assertEqual([r.length for r in rounds], [1] * 8)
    self.assertEqual([r.level for r in rounds],
                     [schedule.level_after(t) for t in range(1, 9)])


  def test_caps_are_fitted_to_keep_rounds_one_length(self):
    schedule = hier_schedule(4, 2)
    self.assertEqual(schedule.fit_cap(0), 0)
    self.assertEqual(schedule.fit_cap(6), 0)  # Rounds end every 4 anyway.
    self.assertEqual(schedule.fit_cap(4), 0)
    self.assertEqual(schedule.fit_cap(3), 2)
    self.assertEqual(schedule.fit_cap(1), 1)
    for cap in range(1, 9):
      fitted = schedule.fit_cap(cap)
      lengths = {r.length for r in schedule.rounds(0, 24, (fitted,))}
      self.assertLen(lengths, 1, (cap, fitted, lengths))


if __name__ == '__main__':
  absltest.main()
