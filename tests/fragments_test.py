"""Streamed averaging: parameters in fragments (`hier.fragments`)."""

import itertools
import os
import re

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
import optax
import pytest

from hier_avg import config_keys
from hier_avg import train
from hier_avg.core import events
from hier_avg.core import fragments
from hier_avg.core import periods
from hier_avg.errors import UserError
from tests.support import configs
from tests.support import devices
from tests.support import engines
from tests.support import reference
from tests.support import trees

LEVELS = ((2, 4), (8, 16))
STEPS = 20  # A whole global period and a local one after it.


def setUpModule():
  devices.set_up_devices()


def _hierarchy(levels=LEVELS, sync_warmup=0):
  return engines.levels_hierarchy(levels, sync_warmup=sync_warmup)


def _brute_force(sizes, count):
  """Every way to cut `sizes` into `count` runs; the smallest largest run,
  the earliest cuts among equals."""
  n = len(sizes)
  best = None
  for cuts in itertools.combinations(range(1, n), count - 1):
    bounds = (0,) + cuts + (n,)
    peak = max(sum(sizes[a:b]) for a, b in zip(bounds, bounds[1:]))
    if best is None or peak < best[0]:
      best = (peak, bounds)
  bounds = best[1]
  return tuple(tuple(range(a, b)) for a, b in zip(bounds, bounds[1:]))


class PartitionTest(parameterized.TestCase):

  def test_offsets_are_torchfts(self):
    self.assertEqual(fragments.offsets(16, 4), (4, 8, 12, 16))
    self.assertEqual(fragments.offsets(16, 3), (5, 10, 16))
    self.assertEqual(fragments.offsets(8, 1), (8,))

  def test_the_smallest_peak_with_the_earliest_cuts(self):
    rng = np.random.default_rng(0)
    for _ in range(200):
      n = int(rng.integers(1, 9))
      sizes = [int(s) for s in rng.integers(1, 6, n) * 4]
      count = int(rng.integers(1, n + 1))
      with self.subTest(sizes=sizes, count=count):
        self.assertEqual(fragments.partition(sizes, count),
                         _brute_force(sizes, count))

  def test_one_fragment_is_every_leaf(self):
    self.assertEqual(fragments.partition([4, 8, 12], 1), ((0, 1, 2),))

  def test_describe_lists_each_fragments_leaves_and_bytes(self):
    data, learner, _ = engines.bn_setup()
    params = jax.eval_shape(lambda: learner.init(jax.random.key(0),
                                                 data.image_shape))[0]
    lines = fragments.describe(params, 2)
    # TinyBNNet's leaves: BatchNorm bias, scale; Conv bias, kernel (108
    # floats); Dense bias, kernel (40 floats).
    self.assertEqual(lines, [
        "fragment 0: 4 leaves, 0.000 MB, ['BatchNorm_0']['bias'] .. "
        "['Conv_0']['kernel']",
        "fragment 1: 2 leaves, 0.000 MB, ['Dense_0']['bias'] .. "
        "['Dense_0']['kernel']"])


def _events(schedule, stop):
  """Per round: (first, length, its level, [(level, its fragments
  applied after it)], innermost first)."""
  rows = []
  for r in schedule.rounds(0, stop):
    applied = {}
    for e in r.applies:
      applied.setdefault(e.level.name, []).append(e.fragment)
    rows.append((r.first, r.length, r.level and r.level.name,
                 [(name, tuple(fs)) for name, fs in applied.items()]))
  return rows


class ScheduleTest(absltest.TestCase):

  def test_rounds_end_at_every_fragment(self):
    schedule = _hierarchy().schedule().with_fragments((1, 3))
    # Global fragments after 5, 10 and 16 of each period of 16; local
    # averagings after every 4.
    self.assertEqual(_events(schedule, 20), [
        (0, 4, 'local', [('local', (0,))]),
        (4, 1, 'global', [('global', (0,))]),
        (5, 3, 'local', [('local', (0,))]),
        (8, 2, 'global', [('global', (1,))]),
        (10, 2, 'local', [('local', (0,))]),
        (12, 4, 'global', [('local', (0,)), ('global', (2,))]),
        (16, 4, 'local', [('local', (0,))])])

  def test_counts_are_the_events(self):
    # The counters' closed form against the events, step by step, with
    # and without phases of periods.
    phased = periods.PeriodController([periods.Phase(3, 1),
                                       periods.Phase(19, 2),
                                       periods.Phase(51, 1)])
    for levels, counts, warmup, controller in (
        (LEVELS, (1, 4), 0, None), (LEVELS, (2, 3), 3, None),
        (((2, 2), (4, 4), (8, 8)), (1, 2, 4), 1, None),
        (LEVELS, (2, 4), 3, phased), (LEVELS, (1, 3), 3, phased),
        (((2, 2), (4, 4), (8, 16)), (2, 1, 1), 3, phased)):
      schedule = _hierarchy(levels, warmup).schedule().with_fragments(
          counts).with_periods(controller)
      top = schedule.levels[-1]
      for steps in (0, 2, 7, 16, 37, 70):
        expected = {}

        def add(level, f):
          expected[level.name] = expected.get(level.name, 0) + 1
          if level.fragments > 1:
            key = f'{level.name}_fragment{f}'
            expected[key] = expected.get(key, 0) + 1

        for step in range(1, steps + 1):
          if step <= warmup:  # Every fragment of the outermost level.
            for f in range(top.fragments):
              add(top, f)
          for event in events.applied_after(schedule, step):
            add(event.level, event.fragment)
        got = {k: v for k, v in schedule.counts(steps).items() if v}
        self.assertEqual(got, expected, (levels, counts, steps))

  def test_warmup_steps_are_synchronous(self):
    # A warmup step averages the gradients, so the whole model: no events.
    schedule = _hierarchy(sync_warmup=2).schedule().with_fragments((1, 4))
    self.assertEqual(_events(schedule, 6)[:3], [
        (0, 1, 'global', []), (1, 1, 'global', []),
        (2, 4, 'global', [('local', (0,)), ('global', (0,))])])
    self.assertEqual([r.synchronous for r in schedule.rounds(0, 6)],
                     [True, True, False])

  def test_one_fragment_changes_nothing(self):
    plain = _hierarchy().schedule()
    self.assertEqual(plain.with_fragments((1, 1)), plain)
    self.assertEqual(list(plain.rounds(0, 40, (3,))),
                     list(plain.with_fragments((1, 1)).rounds(0, 40, (3,))))


def _one_learner(tree, grid_ndim=2):
  """Shapes and dtypes of one learner's leaves."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape[grid_ndim:], x.dtype), tree)


def _check_oracle(test, levels, counts, options):
  """The engine with `counts` fragments per level against the oracle."""
  data, learner, sampler = engines.bn_setup()
  reset = options.get('reset_opt_state', False)
  outer_tx = engines.outer_sgd(options)
  hierarchy = _hierarchy(levels, options.get('sync_warmup', 0))
  engine = engines.make_levels_engine(
      learner, hierarchy, (2,) * len(levels), pack='vmap',
      outer_tx=outer_tx, reset_opt_state=reset, fragments=counts)
  start = engine.init_state(0, data.image_shape)
  got = engines.learner_states(engines.run_engine(
      engine, data, sampler, STEPS), grid_ndim=len(levels))

  sizes = [x.size * x.dtype.itemsize for x in
           jax.tree.leaves(_one_learner(start.params, len(levels)))]
  parts = [_brute_force(sizes, count) for count in counts]
  ref = engines.learner_states(start, grid_ndim=len(levels))
  outers = None
  if outer_tx is not None:
    leaves = jax.tree.leaves(ref[0]['params'])
    outers = [reference.RefOuterSGD(*options['outer'], False,
                                    [leaves[i] for i in part])
              for part in parts[-1]]
  reference.run(learner, ref, reference.nested_levels(8, levels),
                ('params', 'batch_stats'), data.train_images,
                data.train_labels, sampler, STEPS, reset_opt_state=reset,
                sync_warmup=hierarchy.sync_warmup, fragments=parts,
                outers=outers)
  for i, (g, r) in enumerate(zip(got, ref)):
    with test.subTest(learner=i):
      trees.assert_trees_close(g['params'], r['params'], atol=2e-5)
      trees.assert_trees_close(g['batch_stats'], r['batch_stats'],
                               atol=2e-5)
      trees.assert_trees_close(g['opt_state'], r['opt_state'], atol=2e-5)


class EngineTest(parameterized.TestCase):

  def test_one_fragment_is_todays_averaging_bit_for_bit(self):
    data, learner, sampler = engines.bn_setup()
    plain = engines.make_levels_engine(learner, _hierarchy(), (2, 2),
                                       pack='vmap')
    one = engines.make_levels_engine(learner, _hierarchy(), (2, 2),
                                     pack='vmap', fragments=(1, 1))
    # The same programs, so equal to the last bit on any CPU.
    engines.assert_same_programs(plain, one, data, sampler, 8)
    a = engines.run_engine(plain, data, sampler, 8)
    b = engines.run_engine(one, data, sampler, 8)
    for name in ('params', 'batch_stats', 'opt_state'):
      jax.tree.map(np.testing.assert_array_equal, getattr(a, name),
                   getattr(b, name))
    self.assertEqual(plain.communication(a), one.communication(b))

  def test_three_levels_match_the_oracle(self):
    _check_oracle(self, ((2, 2), (4, 4), (8, 8)), (1, 2, 4), {})


@pytest.mark.slow
class OracleTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('global_in_4', LEVELS, (1, 4), {}),
      ('both_in_2_warmup_reset', LEVELS, (2, 2),
       dict(sync_warmup=2, reset_opt_state=True)),
      ('global_in_3_outer_optimizer', LEVELS, (1, 3),
       dict(outer=(0.7, 0.9))),
  )
  def test_matches_the_oracle(self, levels, counts, options):
    _check_oracle(self, levels, counts, options)

  def test_drift_is_the_widest_levels_over_its_fragment(self):
    data, learner, sampler = engines.bn_setup()
    engine = engines.make_levels_engine(learner, _hierarchy(), (2, 2),
                                        pack='vmap', fragments=(1, 4),
                                        spread=True)
    state = engine.init_state(0, data.image_shape)
    ref = engines.learner_states(state)
    sizes = [x.size * x.dtype.itemsize for x in
             jax.tree.leaves(_one_learner(state.params))]
    images, labels = engine.topology.put_replicated(data.train_images,
                                                    data.train_labels)
    got = []
    for round_ in engine.schedule.rounds(0, 16):
      state, outputs = engine.run_round(state, round_, (
          images, labels, engine.topology.put_round_indices(
              sampler, round_.first, round_.length)))
      got.append((round_.end, round_.level.name,
                  np.asarray(outputs['drift']).mean(),
                  np.asarray(outputs['spread']).mean()))
    drift = []
    reference.run(learner, ref, reference.nested_levels(8, LEVELS),
                  ('params', 'batch_stats'), data.train_images,
                  data.train_labels, sampler, 16, drift=drift,
                  fragments=[_brute_force(sizes, 1), _brute_force(sizes, 4)])
    self.assertEqual([g[:2] for g in got], [(4, 'global'), (8, 'global'),
                                            (12, 'global'), (16, 'global')])
    for (_, _, mean, spread), (_, _, ref_drift, ref_spread) in zip(got,
                                                                   drift):
      np.testing.assert_allclose(mean, ref_drift, rtol=1e-4)
      np.testing.assert_allclose(spread, ref_spread, rtol=1e-4)

  def test_resume_inside_a_period_is_exact(self):
    # Stopped after step 10, between fragment events (global after 8 and
    # 12) and inside a local round of 4: per-fragment outer states and the
    # optimizer's come back from the checkpoint.
    data, learner, sampler = engines.bn_setup()
    engine = engines.make_levels_engine(
        learner, _hierarchy(), (2, 2), pack='vmap',
        outer_tx=optax.sgd(0.7, momentum=0.9), fragments=(1, 4))
    straight, _, resumed = engines.straight_and_resumed(
        engine, data, sampler, STEPS, 10, self.create_tempdir().full_path)
    names = ('params', 'batch_stats', 'opt_state', 'outer')
    # The same compiled calls: equal to the last bit.
    for name in names:
      jax.tree.map(np.testing.assert_array_equal, getattr(resumed, name),
                   getattr(straight, name))
    # A run never cut at 10 makes other calls for steps 8..12 (one round
    # of 4, not two of 2), which need not round alike: equal to float32
    # rounding (on an AVX-512 CPU 4 of 32 values differ by one ulp).
    uncut = engines.run_engine(engine, data, sampler, STEPS)
    for name in names:
      trees.assert_trees_close(getattr(resumed, name), getattr(uncut, name),
                               atol=1e-6, rtol=1e-6)



class CollectivesTest(absltest.TestCase):

  def test_each_fragment_event_all_reduces_its_own_bytes(self):
    data, learner, sampler = engines.bn_setup()
    engine = engines.make_levels_engine(learner, _hierarchy(), (2, 2),
                                        pack='vmap', fragments=(1, 2))
    state = engine.init_state(0, data.image_shape)
    images, labels = engine.topology.put_replicated(data.train_images,
                                                    data.train_labels)
    one = _one_learner(state.params)
    leaves = jax.tree.leaves(one)
    parts = fragments.of_tree(one, 2)
    floats = [sum(leaves[i].size for i in part) for part in parts]
    stats = sum(x.size for x in jax.tree.leaves(_one_learner(
        state.batch_stats)))
    rounds = {r.end: r for r in engine.schedule.rounds(0, 16)}
    # After 8: local (the whole model with the BatchNorm statistics, one
    # buffer: a local period ends) then global fragment 0; after 16:
    # local, then global fragment 1 with the statistics.
    for end, expected in ((8, [sum(floats) + stats, floats[0]]),
                          (16, [sum(floats) + stats, floats[1] + stats])):
      round_ = rounds[end]
      indices = engine.topology.put_round_indices(sampler, round_.first,
                                                  round_.length)
      hlo = engine.round_program(round_).lower(
          state, images, labels, indices).compile().as_text()
      # XLA may combine all-reduces into one of a tuple: every operand.
      sizes = [int(n) for result in re.findall(
          r'= (\(?f32\[[^=]*?) all-reduce(?:-start)?\(', hlo)
               for n in re.findall(r'f32\[[\d,]*?(\d+)\]', result)]
      self.assertEqual(sorted(sizes), sorted(expected), end)
    channels = engine.communication(state)
    global_ = channels['global']
    self.assertEqual([c.bytes_per_learner for c in global_.fragments],
                     [4 * floats[0], 4 * (floats[1] + stats)])
    self.assertEqual([c.collectives for c in global_.fragments], [1, 1])
    counters = engine.counters(channels, 16)
    self.assertEqual(counters['global_fragment0_averagings'], 1)
    self.assertEqual(counters['global_averagings'], 2)
    self.assertEqual(counters['global_bytes_per_learner'],
                     4 * (sum(floats) + stats))
    self.assertEqual(counters['local_averagings'], 4)


class ConfigTest(parameterized.TestCase):

  @parameterized.parameters(
      (dict(fragments=(1,)), r'hier.fragments=\(1,\) has 1 entries but '
       'the hierarchy has 2'),
      (dict(fragments=(1, 9)), 'level 1 averages every 8 steps, too few '
       'for 9 fragments'),
      (dict(fragments=(1, 0)), 'must be a tuple of integers >= 1'),
      (dict(fragments=(1, 2), algorithm='asgd'),
       "hier.algorithm='asgd' has no averaging levels to fragment"),
  )
  def test_bad_settings_are_one_line_errors(self, hier, message):
    configs.assert_refused(self, message, k1=4, k2=2, **hier)

  def test_good_settings_pass(self):
    config = configs.tiny_config(1)
    config.hier.update(levels=((2, 2), (4, 4), (8, 8)), fragments=(2, 1, 4),
                       outer_lr=0.7, outer_warmup=2, sync_warmup_steps=3)
    config_keys.validate(config)
    # With periods that change and a cosine outer lr (each fragment's
    # outer steps count on it; `exchange_test.EverythingAtOnceTest`).
    for period_schedule in ('step', 'adaptive'):
      config.hier.update(period_schedule=period_schedule,
                         outer_lr_schedule=('cosine' if period_schedule ==
                                            'step' else 'constant'))
      config_keys.validate(config)


@pytest.mark.slow
class TrainLoopTest(absltest.TestCase):

  def test_a_run_lists_its_fragments_and_counts_their_events(self):
    config = configs.tiny_config(16)
    config.hier.update(k1=4, k2=2, fragments=(1, 2))
    with self.assertLogs(level='INFO') as logs:
      summary = train.train_and_evaluate(config,
                                           self.create_tempdir().full_path)
    self.assertEqual(summary['global_fragment0_averagings'], 2)
    self.assertEqual(summary['global_fragment1_averagings'], 2)
    self.assertEqual(summary['global_averagings'], 4)
    self.assertTrue(any('level 1 fragment 1:' in line
                        for line in logs.output))

  def test_too_many_fragments_for_the_model_is_one_line(self):
    config = configs.tiny_config(16)
    config.hier.update(k1=4, k2=4, fragments=(1, 16))
    workdir = self.create_tempdir().full_path
    with self.assertRaisesRegex(UserError, r'asks for 16 fragments but '
                                r"model.name='\w+' has \d+ parameter"):
      train.train_and_evaluate(config, workdir)
    self.assertEmpty(os.listdir(workdir))


if __name__ == '__main__':
  absltest.main()
