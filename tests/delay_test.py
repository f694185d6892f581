"""Delayed (overlapped) averaging (`hier.delay`, `hier.delay_mix`)."""

import itertools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
import pytest
import optax

from hier_avg import config_keys
from hier_avg import train
from hier_avg.core.schedule import Level, Schedule
from tests.support import configs
from tests.support import devices
from tests.support import engines
from tests.support import reference
from tests.support import trees

LEVELS = ((2, 4), (8, 8))
DELAY = (1, 3)
STEPS = 16


def setUpModule():
  devices.set_up_devices()


def _hierarchy(levels=LEVELS, sync_warmup=0):
  return engines.levels_hierarchy(levels, sync_warmup=sync_warmup)


def _windows(schedule, stop, cut_every=()):
  """Per round: (first, length, its level, the steps before the late
  event it starts, the level of the late event it starts or applies)."""
  rows = []
  for r in schedule.rounds(0, stop, cut_every):
    late = [e for _, events in r.starts for e in events] + [
        e for e in r.applies if e.late]
    rows.append((r.first, r.length, r.level and r.level.name,
                 r.starts[0][0] if r.starts else None,
                 late[0].level.name if late else None))
  return rows


class ScheduleTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.schedule = _hierarchy().schedule().with_delays(DELAY)

  def test_rounds_open_and_close_windows(self):
    # Local averages after 4 of the models of 3; global after 8 of 5.
    self.assertEqual(_windows(self.schedule, 16), [
        (0, 4, 'local', 3, 'local'), (4, 4, 'global', 1, 'global'),
        (8, 4, 'local', 3, 'local'), (12, 4, 'global', 1, 'global')])

  def test_a_cut_inside_the_window_keeps_the_snapshot(self):
    # Log every 2: the cut at 6 falls inside the global window (5, 8]:
    # the round [4, 6) takes the snapshot after step 5 and keeps it, the
    # round [6, 8) applies it.
    self.assertEqual(_windows(self.schedule, 8, (2,)), [
        (0, 2, None, None, None), (2, 2, 'local', 1, 'local'),
        (4, 2, None, 1, 'global'), (6, 2, 'global', None, 'global')])
    # Every step: a snapshot at a round's very start.
    self.assertEqual(_windows(self.schedule, 8, (1,))[4:], [
        (4, 1, None, None, None), (5, 1, None, 0, 'global'),
        (6, 1, None, None, None), (7, 1, 'global', None, 'global')])

  def test_warmup_averagings_are_on_time(self):
    schedule = _hierarchy(sync_warmup=2).schedule().with_delays(DELAY)
    self.assertEqual(_windows(schedule, 10), [
        (0, 1, 'global', None, None), (1, 1, 'global', None, None),
        (2, 4, 'local', 3, 'local'), (6, 4, 'global', 1, 'global')])

  def test_no_delay_changes_nothing(self):
    plain = _hierarchy().schedule()
    self.assertEqual(plain.with_delays((0, 0)), plain)
    self.assertEqual(list(plain.rounds(0, 16, (2,))),
                     list(plain.with_delays((0, 0)).rounds(0, 16, (2,))))
    with self.assertRaises(AssertionError):
      Schedule((Level('local', ('local',), 4, delay=4),))


@pytest.mark.slow
class EngineTest(parameterized.TestCase):

  def test_no_delay_is_todays_averaging_bit_for_bit(self):
    data, learner, sampler = engines.bn_setup()
    plain_engine = engines.make_levels_engine(learner, _hierarchy(), (2, 2))
    zero_engine = engines.make_levels_engine(learner, _hierarchy(), (2, 2),
                                             delay=(0, 0))
    # The same programs, so equal to the last bit on any CPU.
    engines.assert_same_programs(plain_engine, zero_engine, data, sampler,
                                 STEPS)
    plain = engines.run_engine(plain_engine, data, sampler, STEPS)
    zero = engines.run_engine(zero_engine, data, sampler, STEPS)
    for name in ('params', 'batch_stats', 'opt_state'):
      jax.tree.map(np.testing.assert_array_equal, getattr(plain, name),
                   getattr(zero, name))
    self.assertIsNone(zero.comm)

  @parameterized.named_parameters(
      ('two_levels', LEVELS, DELAY, (2, 2), {}),
      # Warmup 3: averagings after 7 (local, of 6) and 11 (global, of 8);
      # cuts at 2, 4, ...: a snapshot at a round's start (8), a cut inside
      # a window (10).
      ('warmup_and_cuts_inside_the_windows', LEVELS, DELAY, (2, 2),
       dict(cut_every=(2,), sync_warmup=3)),
      ('every_step_a_round_one_device', LEVELS, (0, 3), (1, 1),
       dict(cut_every=(1,))),
      ('three_levels_reset_optimizer_state', ((2, 2), (4, 4), (8, 8)),
       (1, 0, 1), (2, 2, 2), dict(reset_opt_state=True)),
      ('outer_optimizer', LEVELS, (0, 3), (2, 2),
       dict(outer=(0.7, 0.9), cut_every=(2,))),
      ('mix_0', LEVELS, DELAY, (2, 2), dict(mix=(0.0, 0.0))),
      ('mix_half', LEVELS, DELAY, (2, 2), dict(mix=(0.5, 0.5))),
      ('compressed_inside', LEVELS, (0, 3), (2, 2),
       dict(compress=('int8', 'none'))),
  )
  def test_matches_the_oracle(self, levels, delay, mesh, options):
    data, learner, sampler = engines.bn_setup()
    cut_every = options.get('cut_every', ())
    mix = options.get('mix', ())
    compress = options.get('compress', ())
    reset = options.get('reset_opt_state', False)
    outer_tx = engines.outer_sgd(options)
    hierarchy = _hierarchy(levels, options.get('sync_warmup', 0))

    # Vmapped learners: the fastest to compile on CPU.
    engine = engines.make_levels_engine(
        learner, hierarchy, mesh, pack='vmap', outer_tx=outer_tx,
        compress=compress, reset_opt_state=reset, delay=delay, delay_mix=mix)
    start = engine.init_state(0, data.image_shape)
    state = engines.run_engine(engine, data, sampler, STEPS,
                               cut_every=cut_every)
    got = engines.learner_states(state, grid_ndim=len(mesh))

    def oracle(delay):
      ref = engines.learner_states(start, grid_ndim=len(mesh))
      outer = (None if outer_tx is None else reference.RefOuterSGD(
          *options['outer'], False, ref[0]['params']))
      reference.run(learner, ref, reference.nested_levels(8, levels),
                    ('params', 'batch_stats'), data.train_images,
                    data.train_labels, sampler, STEPS, outer=outer,
                    reset_opt_state=reset,
                    sync_warmup=hierarchy.sync_warmup,
                    compress=compress, delay=delay,
                    delay_mix=list(mix) or None)
      return ref

    for i, (g, r) in enumerate(zip(got, oracle(delay))):
      with self.subTest(learner=i):
        trees.assert_trees_close(g['params'], r['params'], atol=2e-5)
        trees.assert_trees_close(g['batch_stats'], r['batch_stats'],
                                 atol=2e-5)
    # The delay matters: the oracle on time is far from the engine.
    on_time = oracle(None)
    self.assertGreater(max(
        np.abs(np.asarray(a) - np.asarray(b)).max()
        for g, r in zip(got, on_time)
        for a, b in zip(jax.tree.leaves(g['params']),
                        jax.tree.leaves(r['params']))), 1e-3)

  def test_drift_is_the_snapshots(self):
    data, learner, sampler = engines.bn_setup()
    engine = engines.make_levels_engine(learner, _hierarchy(), (2, 2),
                                        pack='vmap', delay=DELAY,
                                        spread=True)
    state = engine.init_state(0, data.image_shape)
    ref = engines.learner_states(state)
    images, labels = engine.topology.put_replicated(data.train_images,
                                                    data.train_labels)
    got = []
    for round_ in engine.schedule.rounds(0, 8, (2,)):
      state, outputs = engine.run_round(state, round_, (
          images, labels,
          engine.topology.put_round_indices(sampler, round_.first,
                                            round_.length)))
      if round_.level is not None:
        got.append((round_.end, np.asarray(outputs['drift']).mean(),
                    outputs.get('spread')))
    drift = []
    reference.run(learner, ref, reference.nested_levels(8, LEVELS),
                  ('params', 'batch_stats'), data.train_images,
                  data.train_labels, sampler, 8, drift=drift, delay=DELAY)
    self.assertEqual([g[0] for g in got], [4, 8])
    for (step, mean, spread), (ref_step, _, ref_drift, ref_spread) in zip(
        got, drift):
      self.assertEqual(step, ref_step)
      np.testing.assert_allclose(mean, ref_drift, rtol=1e-4)
      if ref_spread is not None:
        np.testing.assert_allclose(np.asarray(spread).mean(), ref_spread,
                                   rtol=1e-4)

  def test_programs_stay_few(self):
    # Whole windows: as many programs as without delay; cuts every 2 or
    # every step add one (the round that keeps the global snapshot). Building
    # a round's program compiles nothing until it is called.
    data = engines.tiny_data()
    learner = engines.make_learner('mlp', data)
    for cut, want in (((), 2), ((2,), 4), ((1,), 4)):
      counts = []
      for delay in ((), DELAY):
        engine = engines.make_levels_engine(learner, _hierarchy(), (2, 2),
                                            delay=delay)
        for round_ in engine.schedule.rounds(0, 3 * STEPS, cut):
          engine.round_program(round_)
        counts.append(len(engine.compiled_rounds))
      self.assertEqual(counts[1], want, cut)
      self.assertLessEqual(counts[1] - counts[0], 2, cut)

  def test_resume_inside_a_window_is_exact(self):
    # Stopped at step 6, inside the global window (5, 8]: the pending
    # averaging (and the outer optimizer's step taken at the snapshot) come
    # back from the checkpoint and the run goes on as if never stopped.
    data, learner, sampler = engines.bn_setup()
    engine = engines.make_levels_engine(
        learner, _hierarchy(), (2, 2), pack='vmap', delay=DELAY,
        outer_tx=optax.sgd(0.7, momentum=0.9))
    straight, part, resumed = engines.straight_and_resumed(
        engine, data, sampler, STEPS, 6, self.create_tempdir().full_path)
    self.assertGreater(max(float(np.abs(x).max()) for x in jax.tree.leaves(
        part.comm['inflight']['global'].target)), 0)
    for name in ('params', 'opt_state', 'outer', 'comm'):
      jax.tree.map(np.testing.assert_array_equal, getattr(resumed, name),
                   getattr(straight, name))


@pytest.mark.slow
class TrainLoopTest(absltest.TestCase):

  def test_a_run_stopped_inside_a_window_resumes_exactly(self):
    # k1 = 4, k2 = 2, delay (1, 3), a row every 2 steps: rounds cut inside
    # the global windows (5, 8] and (13, 16]. The 14-step run ends (and
    # checkpoints) inside the second; lengthened to 16 it resumes there and
    # ends where the straight run does.
    def config(steps):
      c = configs.tiny_config(steps)
      c.hier.update(k1=4, k2=2, delay=(1, 3))
      c.train.log_every = 2
      return c

    straight = train.train_and_evaluate(config(16), self.create_tempdir(
        ).full_path)
    workdir = self.create_tempdir().full_path
    train.train_and_evaluate(config(14), workdir)
    resumed = train.train_and_evaluate(config(16), workdir)
    self.assertEqual(resumed['resumed_from_step'], 14)
    self.assertEqual(resumed['global_averagings'], 2)
    for key in ('final_train_loss', 'test_loss', 'test_accuracy'):
      self.assertEqual(resumed[key], straight[key], key)


def _subjaxprs(eqn):
  for value in eqn.params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if hasattr(item, 'eqns'):
        yield item
      elif hasattr(getattr(item, 'jaxpr', None), 'eqns'):
        yield item.jaxpr


def _scopes(eqn):
  """The name stacks of `eqn` and of every equation nested in it."""
  yield str(eqn.source_info.name_stack)
  for sub in _subjaxprs(eqn):
    for inner in sub.eqns:
      yield from _scopes(inner)


def _round_body(closed):
  """The jaxpr inside a compiled round's jit and shard_map."""
  jaxpr = closed.jaxpr
  while not any(e.primitive.name.startswith('psum') for e in jaxpr.eqns):
    (jaxpr,) = [sub for e in jaxpr.eqns for sub in _subjaxprs(e)]
  return jaxpr


class DataIndependenceTest(parameterized.TestCase):
  """The late averaging's collective needs nothing of the last tau steps.

  Method: every call of the algorithm's `local_step` is traced inside a
  `jax.named_scope` numbered in call order, and the late event's `start`
  takes a number too, so the steps traced after it (the last tau steps,
  unrolled, or the scan that runs them) are the scopes numbered above it.
  In the round's jaxpr (inside jit and shard_map), a forward taint pass
  marks every value computed by an equation of those scopes (or nested
  in one: a scan's body, a jit) and everything computed from a marked
  value. An all-reduce (psum) whose operands are unmarked has no data
  dependence on those steps: an accelerator may run it while they run.
  The same pass finds the marks on the all-reduce of the BatchNorm
  statistics, which average at the window's end, and on the parameters'
  all-reduce when nothing is late, so it does see dependences. A second
  mark, forward from the unmarked all-reduce, checks the other direction:
  no equation of the last steps reads its result.
  """

  def _psums(self, delay, step_loop):
    """For the global round of steps 5..8: [(axes, depends on the steps
    after the snapshot)] per all-reduce, and the round."""
    data, learner, sampler = engines.bn_setup()
    engine = engines.make_levels_engine(learner, _hierarchy(), (2, 2),
                                        delay=delay, round_loop=step_loop)
    calls, marker = itertools.count(), []
    algorithm = engine.algorithm

    class Numbered:
      """`algorithm`, whose `local_step` is a new function each time the
      engine reads it (so `lax.scan` traces it anew, not from its cache)
      and traces in a scope numbered in call order."""

      def __getattr__(self, name):
        return getattr(algorithm, name)

      @property
      def local_step(self):
        def step(state, batch):
          with jax.named_scope(f'traced_step_{next(calls)}_'):
            return algorithm.local_step(state, batch)
        return step

      def start(self, state, event, before=None):
        if event.late:  # The snapshot: its collective starts here.
          marker.append(next(calls))
        return algorithm.start(state, event, before)

    engine.algorithm = Numbered()
    round_ = list(engine.schedule.rounds(0, 8))[1]
    state = engine.init_state(0, data.image_shape)
    images, labels = engine.topology.put_replicated(data.train_images,
                                                    data.train_labels)
    indices = engine.topology.put_round_indices(sampler, round_.first,
                                                round_.length)
    closed = jax.make_jaxpr(engine.round_program(round_))(
        state, images, labels, indices)
    after = marker[0] if marker else -1
    late = tuple(f'traced_step_{n}_' for n in range(after + 1, next(calls)))
    self.assertNotEmpty(late)
    tainted, averaged, found, waits = set(), set(), [], False
    reads = lambda eqn, marked: any(not hasattr(v, 'val') and v in marked
                                    for v in eqn.invars)
    for eqn in _round_body(closed).eqns:
      is_late = any(s in scope for scope in _scopes(eqn) for s in late)
      waits |= is_late and reads(eqn, averaged)
      after_late = reads(eqn, tainted)
      if eqn.primitive.name.startswith('psum'):
        found.append((eqn.params['axes'], after_late))
        if not after_late:
          averaged.update(eqn.outvars)
      if reads(eqn, averaged):
        averaged.update(eqn.outvars)
      if after_late or is_late:
        tainted.update(eqn.outvars)
    return found, waits, round_

  @parameterized.parameters('unroll', 'scan')
  def test_the_snapshots_all_reduce_does_not_wait_for_the_last_steps(
      self, step_loop):
    found, waits, round_ = self._psums(DELAY, step_loop)
    self.assertEqual((round_.first, round_.length, round_.starts[0][0]),
                     (4, 4, 1))
    # The parameters' (at the snapshot) and the BatchNorm statistics' (at
    # step 8), each over the global level's axes.
    self.assertEqual(found, [(('node', 'local'), False),
                             (('node', 'local'), True)])
    # Nor do the last steps read anything computed from the snapshot's
    # all-reduce (a scan carrying it would wait for it).
    self.assertFalse(waits)

  def test_on_time_averaging_waits_for_every_step(self):
    found, _, round_ = self._psums((0, 0), 'unroll')
    self.assertEqual(round_.starts, ())
    self.assertEqual(found, [(('node', 'local'), True)])


class ConfigTest(parameterized.TestCase):

  @parameterized.parameters(
      (dict(delay=(1,)), r'hier.delay=\(1,\) has 1 entries but the '
       r'hierarchy has 2'),
      (dict(delay=(4, 0)), r'level 0 is 4 step\(s\) late but averages '
       'every 4 steps'),
      (dict(delay=(0, -1)), r'must be a tuple of integers >= 0'),
      (dict(delay=(0, 2), delay_mix=(0.5,)),
       r'hier.delay_mix=\(0.5,\) has 1 entries'),
      (dict(delay=(0, 2), delay_mix=(0.0, 1.5)), r'numbers in \[0, 1\]'),
      (dict(delay=(0, 2), delay_mix=(0.5, 0.5)),
       r'alpha=0.5 to level 0, which is not late'),
      (dict(delay_mix=(0.0, 0.5)), r'alpha=0.5 to level 1, which is not '
       'late'),
      (dict(delay=(0, 2), algorithm='asgd'),
       "hier.algorithm='asgd' has no averaging levels to delay"),
      # Adaptive periods decide a phase at its first step; the global
      # level's first fragment averages 8 // 4 = 2 steps into it.
      (dict(delay=(0, 2), fragments=(1, 4), period_schedule='adaptive'),
       r'level 1 is 2 step\(s\) late, but a phase of adaptive periods may '
       r'average it 2 step\(s\) after the phase starts'),
      (dict(levels=((2, 2), (4, 4), (8, 8)), delay=(0, 4, 3)),
       r'level 1 is 4 step\(s\) late but averages every 4'),
  )
  def test_bad_settings_are_one_line_errors(self, hier, message):
    configs.assert_refused(self, message, k1=4, k2=2, **hier)

  def test_good_settings_pass(self):
    config = configs.tiny_config(1)
    config.hier.update(levels=((2, 2), (4, 4), (8, 8)), delay=(1, 0, 5),
                       delay_mix=(0.0, 0.0, 0.5),
                       compress=('none', 'int8', 'int4'),
                       error_feedback=(False, True, True),
                       fragments=(1, 2, 4), sync_warmup_steps=3)
    config_keys.validate(config)
    # Periods known up front, or decided with every delay below the first
    # event of a phase (global: 8 // 4 = 2 steps in at x1).
    for hier in (dict(period_schedule='step', period_milestones=(1,),
                      period_factors=(2,)),
                 dict(period_schedule='adaptive', delay=(1, 0, 1))):
      config.hier.update(**hier)
      config_keys.validate(config)


if __name__ == '__main__':
  absltest.main()
