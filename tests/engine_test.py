"""The mesh engine against the plain-loop reference, and its special cases."""

from absl.testing import absltest
from absl.testing import parameterized
import pytest
import chex
import jax
import numpy as np
import optax

from hier_avg.core import outer as outer_lib
from hier_avg.core.hierarchy import Hierarchy
from tests.support import devices
from tests.support import engines
from tests.support import reference
from tests.support import trees

STEPS = 24

# The oracle cases stop at 12 steps: every case then has had two global
# averagings with local ones (or free steps) between them, so each compiled
# round ran at least twice; more steps prove nothing new, and the reference
# loop costs time per step and learner.
ORACLE_STEPS = 12

# (name, P, S, K1, K2, mesh (node, local) devices, model, averaged parts[,
# runtime.learner_loop]). The layouts with 4 or more learners per device run vmapped:
# unrolled, XLA:CPU compiles one copy of the step per learner and step of a
# round (5x the compile time), and these cases are about the layout and the
# averaging, not the packing. Unrolled packing (the CPU default) is checked
# against the reference by PACK_CASES 'unroll' (4 learners per device) and
# by the 2-per-device cases here.
ORACLE_CASES = (
    ('one_per_device', 8, 4, 2, 3, (2, 4), 'mlp', ('params', 'batch_stats')),
    ('all_on_one_device', 8, 4, 2, 3, (1, 1), 'mlp', ('params',), 'vmap'),
    ('blocks_2x2', 16, 4, 3, 2, (2, 2), 'mlp', ('params', 'batch_stats'),
     'vmap'),
    ('node_axis_only', 8, 2, 1, 4, (4, 1), 'mlp', ('params', 'opt_state')),
    ('odd_sizes', 6, 3, 2, 2, (2, 3), 'mlp', ('params',)),
    ('wide_blocks_k2_1', 12, 6, 4, 1, (1, 2), 'mlp', ('params',), 'vmap'),
    ('bn_stats_averaged', 8, 4, 2, 2, (2, 2), 'bn',
     ('params', 'batch_stats')),
    ('bn_stats_local', 8, 4, 3, 2, (1, 4), 'bn', ('params',)),
    ('bn_everything', 8, 2, 2, 3, (2, 1), 'bn',
     ('params', 'batch_stats', 'opt_state'), 'vmap'),
)


def setUpModule():
  devices.set_up_devices()


# (name, runtime.learner_loop, model): 4 learners per device, packed each way.
PACK_CASES = (
    ('vmap', 'vmap', 'bn'),
    ('vmap_im2col_conv', 'vmap', 'bn_im2col'),
    ('unroll', 'unroll', 'bn'),
)


@pytest.mark.slow
class OuterOptimizerTest(parameterized.TestCase):

  def _run(self, outer_tx, steps=14):
    data = engines.tiny_data()
    learner = engines.make_learner('bn', data)
    engine = engines.make_engine(learner, 8, 4, 2, 3, (2, 4),
                                 outer_tx=outer_tx)
    init = engine.init_state(0, data.image_shape)
    ref_learners = engines.learner_states(init)
    sampler = engines.make_sampler(data, 8)
    final = engines.run_engine(engine, data, sampler, steps, state=init)
    return learner, sampler, data, ref_learners, final

  def test_outer_lr_1_without_momentum_returns_the_average_exactly(self):
    # The step itself, in one program: elementwise, `average + (g + u)`
    # with u = -g is the average to the last bit (`outer.step`).
    tx = optax.sgd(1.0)
    keys = jax.random.split(jax.random.key(0), 3)
    average, anchor = ({'w': jax.random.normal(k, (5, 7)),
                        'b': jax.random.normal(k, (7,))} for k in keys[:2])
    params, state = jax.jit(lambda a, s: outer_lib.step(tx, a, s))(
        average, outer_lib.init(tx, anchor))
    chex.assert_trees_all_equal(params, average)
    chex.assert_trees_all_equal(state['anchor'], average)

  def test_outer_lr_1_without_momentum_is_plain_hier_avg(self):
    *_, plain = self._run(None)
    *_, outer = self._run(optax.sgd(1.0))
    # Other programs (the outer step is code of its own, which XLA may
    # fuse with the averaging differently): equal to float32 rounding.
    for part in ('params', 'batch_stats', 'opt_state'):
      trees.assert_trees_close(getattr(outer, part), getattr(plain, part),
                               atol=1e-6, rtol=1e-6)

  @parameterized.parameters((0.7, 0.5, True), (1.5, 0.0, False),
                            (1.0, 0.9, False))
  def test_matches_reference(self, lr, momentum, nesterov):
    learner, sampler, data, ref_learners, final = self._run(
        optax.sgd(lr, momentum=momentum or None, nesterov=nesterov))
    ref_outer = reference.RefOuterSGD(lr, momentum, nesterov,
                                      anchor=ref_learners[0]['params'])
    reference.run(learner, ref_learners, reference.hier_levels(8, 4, 2, 3),
                  ('params', 'batch_stats'), data.train_images,
                  data.train_labels, sampler, 14, outer=ref_outer)
    got = engines.learner_states(final)
    for i in range(8):
      trees.assert_trees_close(got[i]['params'],
                               ref_learners[i]['params'], atol=1e-5)
    # The outer step happened: the anchor is the last global model.
    trees.assert_trees_close(got[0]['outer']['anchor'],
                             ref_outer.anchor, atol=1e-5)


class OracleTest(parameterized.TestCase):

  @parameterized.named_parameters(*ORACLE_CASES)
  def test_matches_reference(self, p, s, k1, k2, mesh, model, average,
                             pack='auto'):
    self.check_against_reference(p, s, k1, k2, mesh, model, average, pack)

  @parameterized.named_parameters(*PACK_CASES)
  @pytest.mark.slow
  def test_packed_learners_match_reference(self, pack, model):
    engine = self.check_against_reference(8, 4, 2, 2, (1, 2), model,
                                          ('params', 'batch_stats'), pack)
    self.assertEqual(engine.execution.learner_loop, pack)

  def check_against_reference(self, p, s, k1, k2, mesh, model, average,
                              pack='auto'):
    data = engines.tiny_data()
    learner = engines.make_learner(model, data, nesterov=True)
    engine = engines.make_engine(learner, p, s, k1, k2, mesh, average,
                                 pack=pack)
    self.assertEqual(engine.topology.mesh_shape, mesh)
    sampler = engines.make_sampler(data, p)
    init = engine.init_state(0, data.image_shape)
    ref_learners = engines.learner_states(init)
    # Recompile guard: one compilation per averaging kind, whatever the step.
    engines.guard_retraces(engine, ORACLE_STEPS)
    final = engines.run_engine(engine, data, sampler, ORACLE_STEPS,
                               state=init)

    reference.run(learner, ref_learners, reference.hier_levels(p, s, k1, k2),
                  average, data.train_images, data.train_labels, sampler,
                  ORACLE_STEPS)
    got = engines.learner_states(final)
    for i in range(p):
      for part in ('params', 'batch_stats', 'opt_state'):
        trees.assert_trees_close(got[i][part], ref_learners[i][part])
    return engine

  @parameterized.parameters('scan', 'unroll')
  @pytest.mark.slow
  def test_rounds_equal_single_steps(self, round_loop):
    # One dispatch per round (scanned or unrolled) computes what one
    # dispatch per step computes.
    data = engines.tiny_data()
    engine = engines.make_engine(engines.make_learner('bn', data), 8, 4, 3,
                                 2, (2, 2), round_loop=round_loop)
    self.assertEqual(engine.execution.step_loop, round_loop)
    sampler = engines.make_sampler(data, 8)
    per_round = engines.run_engine(engine, data, sampler, 14)
    per_step = engines.run_engine(engine, data, sampler, 14, cut_every=(1,))
    self.assertEqual(set(engine.compiled_rounds),
                     {('local', 3), ('global', 3), (None, 2),
                      (None, 1), ('local', 1), ('global', 1)})
    trees.assert_trees_close(per_round.params, per_step.params,
                             atol=1e-6)

  @pytest.mark.slow
  def test_streamed_rounds_equal_resident_rounds(self):
    # A round fed the minibatches themselves (streamed data) computes what a
    # round that gathers them from resident data by index computes: to
    # float32 rounding, as the programs differ (the gather).
    data = engines.tiny_data()
    engine = engines.make_engine(engines.make_learner('bn', data), 4, 2, 2,
                                 2, (2, 2))
    sampler = engines.make_sampler(data, 4)
    # Local averaging after step 2, global after 4, a lone step 5.
    resident = engines.run_engine(engine, data, sampler, 5)
    streamed = engines.run_engine(engine, data, sampler, 5, streamed=True)
    self.assertIn(('global', 2, 'streamed'), engine.compiled_rounds)
    self.assertEqual(engine.topology.process_learner_ids().tolist(),
                     list(range(4)))
    trees.assert_states_close(resident, streamed)

  def test_learners_diverge_between_averagings(self):
    # Guards the oracle itself: without averaging, learners must differ, so
    # matching the reference is not trivially "everyone is identical".
    data = engines.tiny_data()
    engine = engines.make_engine(engines.make_learner('mlp', data), 4, 2,
                                 5, 2, (1, 1))
    state = engines.run_engine(engine, data, engines.make_sampler(data, 4), 3)
    w = engines.learner_states(state)
    self.assertGreater(
        np.abs(w[0]['params']['Dense_0']['kernel'] -
               w[1]['params']['Dense_0']['kernel']).max(), 1e-4)

  def test_init_learners_identical_with_own_keys(self):
    data = engines.tiny_data()
    engine = engines.make_engine(engines.make_learner('bn', data), 8, 4, 1, 1)
    learners = engines.learner_states(engine.init_state(0, data.image_shape))
    keys = {tuple(np.asarray(jax.random.key_data(l['rng'])).ravel())
            for l in learners}
    self.assertLen(keys, 8)
    for l in learners[1:]:
      trees.assert_trees_close(l['params'], learners[0]['params'],
                               atol=0, rtol=0)


@pytest.mark.slow
class GlobalAverageTest(parameterized.TestCase):

  @parameterized.parameters(((1, 1),), ((2, 2),), ((2, 4),))
  def test_mean_of_all_learners_and_state_untouched(self, mesh):
    data = engines.tiny_data()
    engine = engines.make_engine(engines.make_learner('bn', data), 8, 4, 5,
                                 5, mesh)
    state = engines.run_engine(engine, data, engines.make_sampler(data, 8), 3)
    before = engines.learner_states(state)
    params, batch_stats = engine.kernels.global_average(state)
    after = engines.learner_states(state)
    for part in ('params', 'batch_stats'):
      want = jax.tree.map(lambda *x: np.mean(np.stack(x), 0),
                          *[l[part] for l in before])
      got = params if part == 'params' else batch_stats
      trees.assert_trees_close(got, want, atol=1e-6)
      for b, a in zip(before, after):
        trees.assert_trees_close(a[part], b[part], atol=0, rtol=0)


class SpecialCasesTest(parameterized.TestCase):
  """Hier-AVG's special cases hold exactly (up to float rounding)."""

  def _hier(self, p, s, k1, k2, model='mlp', mesh=(-1, -1), **opt):
    data = engines.tiny_data()
    learner = engines.make_learner(model, data, **opt)
    engine = engines.make_engine(learner, p, s, k1, k2, mesh)
    sampler = engines.make_sampler(data, p)
    init = engine.init_state(0, data.image_shape)
    start = engines.learner_states(init)
    final = engines.run_engine(engine, data, sampler, STEPS, state=init)
    return data, learner, sampler, start, engines.learner_states(final)

  def _kavg_reference(self, data, learner, sampler, start, k):
    reference.run(learner, start, reference.kavg_levels(len(start), k),
                  ('params', 'batch_stats'), data.train_images,
                  data.train_labels, sampler, STEPS)
    return start

  @parameterized.named_parameters(
      ('momentum', dict(momentum=0.9)),
      ('nesterov', dict(momentum=0.9, nesterov=True)),
      ('weight_decay', dict(momentum=0.9, weight_decay=5e-3)),
      ('plain_sgd_bn', dict(momentum=0.0, weight_decay=0.0), 'bn'),
  )
  def test_k1_k2_1_is_synchronous_sgd(self, opt, model='mlp'):
    p = 8
    data, learner, sampler, start, got = self._hier(p, 4, 1, 1, model, **opt)
    l0 = start[0]
    params, batch_stats = reference.run_sync_sgd(
        learner, l0['params'], l0['batch_stats'], l0['opt_state'],
        [l['rng'] for l in start], data.train_images, data.train_labels,
        sampler, STEPS)
    for l in got:
      trees.assert_trees_close(l['params'], params)
      trees.assert_trees_close(l['batch_stats'], batch_stats)

  def test_s_equals_p_is_kavg_with_k1(self):
    data, learner, sampler, start, got = self._hier(8, 8, 3, 2)
    want = self._kavg_reference(data, learner, sampler, start, 3)
    for g, w in zip(got, want):
      trees.assert_trees_close(g['params'], w['params'])

  def test_k2_1_is_kavg_with_k1(self):
    data, learner, sampler, start, got = self._hier(8, 4, 3, 1)
    want = self._kavg_reference(data, learner, sampler, start, 3)
    for g, w in zip(got, want):
      trees.assert_trees_close(g['params'], w['params'])

  def test_s_1_is_kavg_with_k1_times_k2(self):
    data, learner, sampler, start, got = self._hier(8, 1, 2, 3)
    want = self._kavg_reference(data, learner, sampler, start, 6)
    for g, w in zip(got, want):
      trees.assert_trees_close(g['params'], w['params'])


@pytest.mark.slow
class LayoutInvarianceTest(absltest.TestCase):

  def test_same_parameters_on_1_2_4_8_devices(self):
    # Vmapped (OracleTest checks both packings against the reference).
    results = engines.train_on_meshes(
        Hierarchy(16, (4, 16), (2, 4)), ((1, 1), (1, 2), (2, 2), (2, 4)), 20)
    for mesh, (shape, tree) in results.items():
      with self.subTest(mesh=mesh):
        self.assertEqual(shape, mesh)
        trees.assert_trees_close(tree, results[(1, 1)][1], atol=1e-6)


if __name__ == '__main__':
  absltest.main()
