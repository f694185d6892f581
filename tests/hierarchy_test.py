"""Hierarchies of any depth: `hier.levels` against the plain-loop oracle."""

import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import pytest

from hier_avg import builder, config_keys, train
from hier_avg.core.hierarchy import Hierarchy
from hier_avg.core.schedule import hier_schedule
from hier_avg.errors import UserError
from tests.support import configs
from tests.support import devices
from tests.support import engines
from tests.support import outputs
from tests.support import reference
from tests.support import trees

STEPS = 16
THREE_LEVELS = ((2, 2), (4, 4), (8, 8))


def setUpModule():
  devices.set_up_devices()


def _hierarchy(pairs, num_learners=8):
  return engines.levels_hierarchy(pairs, num_learners)


class HierarchyTest(parameterized.TestCase):

  def test_two_levels_are_the_papers_grid_names_and_schedule(self):
    config = configs.tiny_config(1)
    config.hier.update(num_learners=8, group_size=4, k1=2, k2=3)
    hierarchy = Hierarchy.from_config(config.hier)
    self.assertEqual(hierarchy.grid_shape, (2, 4))
    self.assertEqual(hierarchy.axis_names, ('node', 'local'))
    self.assertEqual(hierarchy.schedule(), hier_schedule(2, 3))
    # The same two levels spelled as pairs.
    config.hier.levels = ((4, 2), (8, 6))
    self.assertEqual(Hierarchy.from_config(config.hier), hierarchy)

  def test_three_levels_nest_their_groups_and_axes(self):
    hierarchy = _hierarchy(((2, 2), (4, 8), (16, 32)), 16)
    self.assertEqual(hierarchy.grid_shape, (4, 2, 2))
    self.assertEqual(hierarchy.axis_names, ('node', 'level1', 'local'))
    schedule = hierarchy.schedule()
    self.assertEqual([(l.name, l.axes, l.period) for l in schedule.levels],
                     [('local', ('local',), 2),
                      ('level1', ('level1', 'local'), 8),
                      ('global', ('node', 'level1', 'local'), 32)])
    # After step t the outermost level whose period divides t averages.
    self.assertEqual([getattr(schedule.level_after(t), 'name', None)
                      for t in (1, 2, 4, 8, 16, 30, 32)],
                     [None, 'local', 'local', 'level1', 'level1', 'local',
                      'global'])
    self.assertEqual(schedule.counts(64),
                     {'local': 24, 'level1': 6, 'global': 2})

  def test_one_level_is_kavg(self):
    hierarchy = _hierarchy(((8, 5),))
    self.assertEqual(hierarchy.grid_shape, (1, 8))
    self.assertEqual(hierarchy.level_names, ('global',))
    self.assertEqual(hierarchy.schedule().levels[0].axes, ('node', 'local'))

  @parameterized.named_parameters(
      ('outermost_not_p', ((2, 2), (4, 8)), 'must be hier.num_learners=8'),
      ('sizes_not_nested', ((2, 2), (3, 4), (8, 8)),
       'group size 3 must be a larger multiple of the 2'),
      ('sizes_repeat', ((4, 2), (4, 4), (8, 8)),
       'group size 4 must be a larger multiple of the 4'),
      ('periods_not_nested', ((2, 2), (4, 6), (8, 9)),
       'period 9 must be a larger multiple of the 6'),
      ('periods_repeat', ((2, 2), (4, 2), (8, 8)),
       'period 2 must be a larger multiple of the 2'),
      ('not_pairs', ((2, 2, 1), (8, 8)), 'must be \\(group size, period\\) '
       'pairs'),
      ('zero', ((0, 2), (8, 8)), 'pairs of integers >= 1'),
  )
  def test_broken_rules_are_one_line_errors(self, levels, message):
    config = configs.tiny_config(1)
    config.hier.levels = levels
    with self.assertRaisesRegex(UserError, message) as raised:
      config_keys.validate(config)
    self.assertNotIn('\n', str(raised.exception))

  def test_asgd_refuses_levels(self):
    config = configs.tiny_config(1)
    config.hier.update(algorithm='asgd', levels=((8, 2),))
    with self.assertRaisesRegex(UserError, 'leave hier.levels and'):
      config_keys.validate(config)

  def test_levels_replace_an_unused_group_size(self):
    # group_size=3 does not divide P = 8, but levels make it unused.
    config = configs.tiny_config(1)
    config.hier.update(group_size=3, levels=((2, 2), (8, 4)))
    config_keys.validate(config)
    self.assertEqual(builder.build_topology(config).grid_shape, (4, 2))


class ThreeLevelOracleTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('one_per_device', (2, 2, 2), 'auto'),
      ('blocks', (1, 2, 1), 'vmap'),
  )
  def test_matches_reference(self, mesh, pack):
    data = engines.tiny_data()
    learner = engines.make_learner('bn', data, nesterov=True)
    engine = engines.make_levels_engine(learner, _hierarchy(THREE_LEVELS),
                                        mesh, pack=pack)
    self.assertEqual(engine.topology.mesh_shape, mesh)
    sampler = engines.make_sampler(data, 8)
    init = engine.init_state(0, data.image_shape)
    ref_learners = engines.learner_states(init, grid_ndim=3)
    engines.guard_retraces(engine, STEPS)
    final = engines.run_engine(engine, data, sampler, STEPS, state=init)
    reference.run(learner, ref_learners,
                  reference.nested_levels(8, THREE_LEVELS),
                  ('params', 'batch_stats'), data.train_images,
                  data.train_labels, sampler, STEPS)
    got = engines.learner_states(final, grid_ndim=3)
    for i in range(8):
      for part in ('params', 'batch_stats', 'opt_state'):
        trees.assert_trees_close(got[i][part], ref_learners[i][part])

  def test_an_innermost_level_of_one_learner_is_the_outer_two(self):
    # Averaging a group of one is the identity: ((1, 2), (4, 4), (8, 8))
    # trains what ((4, 4), (8, 8)) trains (same round cuts). The grids
    # differ (three axes, two), and so do the programs: equal to float32
    # rounding.
    data = engines.tiny_data()
    learner = engines.make_learner('bn', data)
    sampler = engines.make_sampler(data, 8)
    three = engines.make_levels_engine(
        learner, _hierarchy(((1, 2), (4, 4), (8, 8))), (2, 4, 1))
    two = engines.make_levels_engine(
        learner, _hierarchy(((4, 4), (8, 8))), (2, 4))
    got = engines.run_engine(three, data, sampler, STEPS, cut_every=(2,))
    want = engines.run_engine(two, data, sampler, STEPS, cut_every=(2,))
    trees.assert_trees_close(
        (got.params, got.batch_stats, got.opt_state),
        jax.tree.map(lambda x: x[:, :, None],
                     (want.params, want.batch_stats, want.opt_state)),
        atol=1e-6, rtol=1e-6)


@pytest.mark.slow
class ThreeLevelRunTest(absltest.TestCase):

  def test_same_parameters_on_1_2_4_8_devices(self):
    results = engines.train_on_meshes(
        _hierarchy(THREE_LEVELS),
        ((1, 1, 1), (1, 1, 2), (1, 2, 2), (2, 2, 2)), STEPS)
    for mesh, (shape, tree) in results.items():
      with self.subTest(mesh=mesh):
        self.assertEqual(shape, mesh)
        trees.assert_trees_close(tree, results[(1, 1, 1)][1], atol=1e-6)

  def test_levels_spelling_trains_the_group_size_spelling_bit_for_bit(self):
    def config(**hier):
      c = configs.tiny_config(12)
      c.hier.update(num_learners=8, **hier)
      return c

    def run(**hier):
      workdir = tempfile.mkdtemp()
      summary = train.train_and_evaluate(config(**hier), workdir)
      return summary, outputs.final_model(workdir)

    # One hierarchy, so the same programs: equal to the last bit.
    self.assertEqual(
        Hierarchy.from_config(config(levels=((4, 2), (8, 6))).hier),
        Hierarchy.from_config(config(group_size=4, k1=2, k2=3).hier))
    pairs, pairs_model = run(levels=((4, 2), (8, 6)))
    keys, keys_model = run(group_size=4, k1=2, k2=3)
    chex.assert_trees_all_equal(pairs_model, keys_model)
    self.assertEqual(pairs['levels'], [[4, 2], [8, 6]])
    self.assertEqual(keys['levels'], pairs['levels'])
    self.assertEqual(pairs['final_train_loss'], keys['final_train_loss'])
    # A three-level run names each level's counters.
    three, _ = run(levels=THREE_LEVELS)
    self.assertEqual((three['local_averagings'], three['level1_averagings'],
                      three['global_averagings']), (3, 2, 1))


if __name__ == '__main__':
  absltest.main()
