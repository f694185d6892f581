"""Simulated outages against the plain-loop oracle, on a 3-level hierarchy.

Learners that are down take no step and are left out of every averaging;
one that comes back is healed from its nearest group with a live member;
a group below its level's minimum skips the averaging. The engine must
train what `reference.RefExchange` writes out, and compile the same
programs however many outages there are.
"""

import copy
import dataclasses
import functools
import types

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
import optax
import pytest

from configs import cifar10
from hier_avg import config_keys
from hier_avg.core import membership as membership_lib
from hier_avg.core import schedule as schedule_lib
from hier_avg.core.membership import Membership, Outage
from hier_avg.errors import UserError
from hier_avg.tools import simulated_clock
from tests.support import devices
from tests.support import engines
from tests.support import reference
from tests.support import trees

# Pairs of learners, nodes of 4, all 8: periods 2, 4, 8.
LEVELS = ((2, 2), (4, 4), (8, 8))
STEPS = 17
OUTER = (0.7, 0.9)

CASES = (
    # One learner of a pair down across a pair averaging and a node one.
    ('one_learner_in_a_group', ((3, 3, 5),), (), 'nearest', False),
    # A whole node (learners 4..7) down across the global averaging of
    # step 8: healed from the other node when it comes back at 10.
    ('a_whole_node_across_the_outermost', tuple(
        (j, 6, 9) for j in range(4, 8)), (), 'nearest', True),
    # The same node coming back with its old models.
    ('a_whole_node_stale', tuple((j, 6, 9) for j in range(4, 8)), (),
     'stale', False),
    # A quorum of 4 of 8 at the global level: with 5 down over steps 7..9,
    # the global averaging of step 8 is skipped.
    ('a_quorum_skips_an_averaging', tuple((j, 7, 9) for j in range(5)),
     (1, 2, 4), 'nearest', True),
    # Sample weights: learner 3 misses step 2 and learner 6 steps 5..6,
    # so each weighs less in the averagings of its groups after.
    ('sample_weights', ((3, 2, 2), (6, 5, 6)), (), 'nearest', True,
     'samples'),
    # Periods in time: learner 3 is a straggler that fits 1 of every 2
    # steps (learner 6 fits 0 of them and only averages), weighed by its
    # samples, with an outage on top.
    ('a_straggler_with_time_periods', ((1, 9, 11),), (), 'nearest', True,
     'samples', (2, (2, 2, 2, 1, 2, 2, 0, 2))),
)


def setUpModule():
  devices.set_up_devices()


def _engine_run(outages, min_members=(), heal='nearest', nesterov=False,
                weighting='uniform', in_time=(0, ())):
  """(engine, data, learner, sampler, learners at the start, learners
  after `STEPS` steps) of the engine with `outages`."""
  data, learner, sampler = engines.bn_setup()
  membership = Membership(tuple(Outage(*o) for o in outages), 8, heal,
                          tuple(min_members), weighting, *in_time)
  outer_tx = (optax.sgd(OUTER[0], momentum=OUTER[1], nesterov=True)
              if nesterov else None)
  engine = engines.make_levels_engine(
      learner, engines.levels_hierarchy(LEVELS), (2, 2, 2),
      outer_tx=outer_tx, membership=membership)
  state = engine.init_state(0, data.image_shape)
  start = engines.learner_states(state, grid_ndim=3)
  got = engines.learner_states(
      engines.run_engine(engine, data, sampler, STEPS, state=state),
      grid_ndim=3)
  return engine, data, learner, sampler, start, got


def _run(outages, min_members, heal, nesterov, weighting='uniform',
         in_time=(0, ())):
  engine, data, learner, sampler, start, got = _engine_run(
      outages, min_members, heal, nesterov, weighting, in_time)
  ref = copy.deepcopy(start)
  outer = (reference.RefOuterSGD(*OUTER, True, start[0]['params'])
           if nesterov else None)
  reference.run(learner, ref, reference.nested_levels(8, LEVELS),
                ('params', 'batch_stats'), data.train_images,
                data.train_labels, sampler, STEPS, outer=outer,
                outages=outages, min_members=min_members, heal=heal,
                weighting=weighting, per_period=in_time[0],
                steps_fit=in_time[1])
  return engine, start, got, ref


@functools.cache
def _plain_last_learner(nesterov: bool) -> list:
  """The last learner's parameters after a run without outages."""
  return _leaves(_engine_run((), nesterov=nesterov)[-1][7]['params'])


class _OracleTest(parameterized.TestCase):

  def check(self, outages, min_members, heal, nesterov,
            weighting='uniform', in_time=(0, ())):
    _, start, got, ref = _run(outages, min_members, heal, nesterov,
                              weighting, in_time)
    for i, (g, r) in enumerate(zip(got, ref)):
      with self.subTest(learner=i):
        for part in ('params', 'batch_stats'):
          trees.assert_trees_close(g[part], r[part], atol=2e-5)
    # The outage is seen: the learners differ from a run without one.
    self.assertFalse(all(np.allclose(a, b) for a, b in zip(
        _leaves(got[7]['params']), _plain_last_learner(nesterov))))


# The fast tier: healing from the nearest group, a quorum, and a straggler
# with periods in time and sample weights; the slow tier the rest.
FAST = ('one_learner_in_a_group', 'a_quorum_skips_an_averaging',
        'a_straggler_with_time_periods')


class OracleTest(_OracleTest):

  @parameterized.named_parameters(*[c for c in CASES if c[0] in FAST])
  def test_matches_the_oracle(self, *case):
    self.check(*case)


@pytest.mark.slow
class MoreOracleTest(_OracleTest):

  @parameterized.named_parameters(*[c for c in CASES if c[0] not in FAST])
  def test_matches_the_oracle(self, *case):
    self.check(*case)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


class MembershipTest(absltest.TestCase):

  def test_up_and_returning(self):
    m = Membership((Outage(1, 2, 3),), 3)
    np.testing.assert_array_equal(m.up(0, 5)[:, 1], [1, 0, 0, 1, 1])
    np.testing.assert_array_equal(m.returning(0, 5)[:, 1], [0, 0, 0, 1, 0])
    # A round that starts where the learner comes back.
    np.testing.assert_array_equal(m.returning(3, 2)[:, 1], [1, 0])
    self.assertEqual(m.lost_steps(5), 2)
    stale = Membership((Outage(1, 2, 3),), 3, 'stale')
    self.assertFalse(stale.returning(0, 5).any())

  def test_periods_in_time(self):
    # A period of 4 steps of 1 s: step times 0.5, 1, 1.5 and 5 s fit 8,
    # 4, 2 and 0 steps; the period has the fastest's 8, and the levels'
    # periods (4, 16) become (8, 32) steps.
    per_period, fit = membership_lib.time_periods(
        np.array([0.5, 1.0, 1.5, 5.0]), 1.0, 4)
    self.assertEqual((per_period, fit), (8, (8, 4, 2, 0)))
    m = Membership((), 4, per_period=per_period, steps_fit=fit)
    self.assertEqual(m.periods((4, 16)), (8, 32))
    takes = m.takes(6, 4)  # Steps 7..10: the end of a period, the start.
    np.testing.assert_array_equal(takes[:, 1], [0, 0, 1, 1])
    np.testing.assert_array_equal(takes[:, 0], [1, 1, 1, 1])
    self.assertFalse(takes[:, 3].any())
    self.assertTrue(m.up(6, 4).all())  # All average.

  def test_tally(self):
    # Nodes of 4 averaging every 4 steps, all 8 every 16; node 1 down for
    # steps 10..30, learner 3 for 5..12; a node averages with 2 or more.
    m = Membership(tuple(Outage(*o) for o in (
        (3, 5, 12), (4, 10, 30), (5, 10, 30), (6, 10, 30), (7, 10, 30))),
                   8, min_members=(2, 1))
    tally = membership_lib.Tally(m, schedule_lib.hier_schedule(4, 4),
                                 (4, 8))
    want = {'lost_learner_steps': 92, 'local_skipped': 4,
            'global_skipped': 0}
    self.assertEqual(tally.at(48), want)
    # Node 1 skipped the local averagings of steps 12, 20, 24 and 28.
    self.assertEqual(tally.at(20), {'lost_learner_steps': 8 + 4 * 11,
                                    'local_skipped': 2,
                                    'global_skipped': 0})
    self.assertEqual(tally.at(48), want)

  def test_bad_outages_are_one_line_each(self):
    for outages, says in (
        (((9, 1, 2),), 'names learner 9'),
        (((0, 0, 2),), 'count from 1'),
        (((0, 5, 2),), 'ends before it starts'),
        (((0, 1, 4), (1, 3, 5)), 'every learner down at step 3')):
      problems = membership_lib.check_outages(
          membership_lib.parse_outages(outages), 2)
      self.assertLen(problems, 1)
      self.assertIn(says, problems[0])
      self.assertNotIn('\n', problems[0])


class ConfigTest(absltest.TestCase):

  def test_bad_values_are_refused_in_one_line(self):
    for key, value, says in (
        ('faults.outages', ((9, 1, 2),), 'names learner 9'),
        ('faults.outages', ((0, 5, 2),), 'ends before it starts'),
        ('faults.outages', tuple((j, 3, 4) for j in range(8)),
         'every learner down'),
        ('hier.min_members', (5, 1), 'at most the group size'),
        ('hier.compress', ('none', 'int8'), 'not simulated with '
         'hier.compress'),
        ('hier.period_schedule', 'step', 'not simulated with '
         "hier.period_schedule='step'")):
      config = cifar10.get_config('cpu')
      config.faults.outages = ((3, 5, 9),)
      config.hier.period_unit = 'time'
      section, name = key.split('.')
      setattr(config[section], name, value)
      with self.assertRaisesRegex(UserError, says) as e:
        config_keys.validate(config)
      self.assertNotIn('\n', str(e.exception))

  def test_no_outages_is_no_membership(self):
    config = cifar10.get_config('cpu')
    self.assertIsNone(membership_lib.from_config(config.faults, config.hier,
                                                 100))

  def test_drawn_node_failures(self):
    nodes = [range(0, 4), range(4, 8)]
    drawn = membership_lib.draw_node_outages(nodes, 20, 5, 200, seed=3)
    again = membership_lib.draw_node_outages(nodes, 20, 5, 200, seed=3)
    self.assertEqual(drawn, again)  # Seeded.
    self.assertNotEqual(drawn, membership_lib.draw_node_outages(
        nodes, 20, 5, 200, seed=4))
    self.assertNotEmpty(drawn)
    for o in drawn:  # Whole nodes, for the downtime, inside the run.
      self.assertEqual(o.last - o.first, 4)
      self.assertLessEqual(o.first, 200)
      node = o.learner // 4
      self.assertEqual({p.learner for p in drawn if p.first == o.first
                        and p.learner // 4 == node}, set(nodes[node]))
    # Never both nodes at once.
    self.assertEqual(membership_lib.check_outages(drawn, 8), [])


class ClockTest(absltest.TestCase):

  def test_matches_a_hand_count(self):
    # 4 learners, pairs averaging every 2 steps (0.5 s), all every 4
    # (1 s); step times 1, 2, 1, 3 s. Learner 3 is down for steps 3..4.
    clock = simulated_clock.SimulatedClock(
        np.array([1.0, 2.0, 1.0, 3.0]), (2, 4), (0.5, 1.0))
    found = clock.run(schedule_lib.hier_schedule(2, 2), 4)
    # After step 2: [2, 4, 2, 6] -> pairs [4.5, 4.5, 6.5, 6.5]; after 4:
    # [6.5, 8.5, 8.5, 12.5] -> all 13.5.
    self.assertEqual(found[1]['simulated_seconds'], 6.5)
    self.assertEqual(found[3]['simulated_seconds'], 13.5)
    self.assertAlmostEqual(found[3]['goodput'], 16 / (4 * 13.5))
    down = dataclasses.replace(clock, membership=Membership(
        (Outage(3, 3, 4),), 4))
    found = down.run(schedule_lib.hier_schedule(2, 2), 4)
    # Steps 3 and 4 without learner 3: [6.5, 8.5, 8.5, 6.5] -> the three
    # up 9.5; learner 3 keeps its 6.5.
    self.assertEqual(found[3]['simulated_seconds'], 9.5)
    self.assertAlmostEqual(found[3]['goodput'], 14 / (4 * 9.5))

  def test_a_link_alone_turns_the_clock_on(self):
    # Without outages or unequal speeds the clock runs only where a link is
    # given (the metrics stay today's otherwise).
    config = cifar10.get_config('cpu')
    engine = types.SimpleNamespace(
        algorithm=types.SimpleNamespace(membership=None),
        level_group_sizes=(4, 8), schedule=schedule_lib.hier_schedule(1, 2),
        topology=types.SimpleNamespace(num_learners=8))
    self.assertIsNone(simulated_clock.from_config(config.faults, engine, 4,
                                                  1000))
    config.faults.link_gbps = (0.0, 8e-6)  # 1 kB/s between the nodes.
    config.faults.link_latency_us = 0.0
    found = simulated_clock.from_config(config.faults, engine, 4, 1000)
    # Steps of 1 s; a ring all-reduce of 1 kB among 8 over 1 kB/s after
    # steps 2 and 4: 2 * 7/8 s each.
    self.assertEqual([f['simulated_seconds'] for f in found],
                     [1.0, 3.75, 4.75, 7.5])
    config.hier.period_schedule = 'adaptive'
    with self.assertRaisesRegex(UserError, 'faults.link_gbps=.* need the '
                                'averagings known before the run'):
      config_keys.validate(config)

  def test_a_speed_file_of_the_wrong_length_is_one_line(self):
    path = self.create_tempfile(content='1.0\n2.0\n').full_path
    config = cifar10.get_config('cpu')
    config.faults.speed = path
    with self.assertRaisesRegex(UserError, 'has 2 value.* 8 learners') as e:
      config_keys.validate(config)
    self.assertNotIn('\n', str(e.exception))


class ResumeTest(absltest.TestCase):

  def test_a_resume_inside_an_outage_is_exact(self):
    # Stopped at step 6, with learner 3 down (steps 3..9) and the node's
    # averaging of step 4 taken without it: who is up comes back from the
    # checkpoint, and the run goes on as if never stopped.
    data, learner, sampler = engines.bn_setup()
    engine = engines.make_levels_engine(
        learner, engines.levels_hierarchy(LEVELS), (2, 2, 2),
        membership=Membership((Outage(3, 3, 9),), 8))
    straight, part, resumed = engines.straight_and_resumed(
        engine, data, sampler, STEPS, 6, self.create_tempdir().full_path)
    self.assertFalse(bool(np.asarray(part.members['up']).reshape(-1)[3]))
    for name in ('params', 'opt_state', 'batch_stats', 'members'):
      jax.tree.map(np.testing.assert_array_equal, getattr(resumed, name),
                   getattr(straight, name))


class EvaluatedModelTest(absltest.TestCase):

  def test_the_mean_of_the_learners_up(self):
    # Learner 3 is down at step 6: the model evaluated and exported is the
    # mean of the 7 others (the live run's), not of its stale one too.
    data, learner, sampler = engines.bn_setup()
    engine = engines.make_levels_engine(
        learner, engines.levels_hierarchy(LEVELS), (2, 2, 2),
        membership=Membership((Outage(3, 3, 9),), 8))
    state = engines.run_engine(engine, data, sampler, 6)
    learners = engines.learner_states(state, grid_ndim=3)
    params, batch_stats = engine.kernels.global_average(state)
    up = [l for i, l in enumerate(learners) if i != 3]
    for got, part in ((params, 'params'), (batch_stats, 'batch_stats')):
      want = jax.tree.map(lambda *x: np.mean(np.stack(x), 0),
                          *[l[part] for l in up])
      trees.assert_trees_close(got, want, atol=1e-6)
    everyone = jax.tree.map(lambda *x: np.mean(np.stack(x), 0),
                            *[l['params'] for l in learners])
    self.assertFalse(np.allclose(jax.tree.leaves(params)[0],
                                 jax.tree.leaves(everyone)[0], atol=1e-6))


class ProgramsTest(absltest.TestCase):

  def test_twenty_outages_compile_what_one_does(self):
    counts = []
    for outages in (((3, 3, 5),),
                    tuple((j % 8, 1 + j, 2 + j) for j in range(20))):
      engine = _engine_run(outages)[0]
      counts.append(len(engine.compiled_rounds))
    self.assertEqual(counts[0], counts[1])


if __name__ == '__main__':
  absltest.main()
