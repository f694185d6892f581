"""Every communication option combined, against the event-by-event oracle.

The global level of a 3-level hierarchy ((2, 2), (4, 4), (8, 8)) on
2 x 2 x 2 devices takes each combination of compression {none, bfloat16,
int8 with error feedback} x delay {0, 2} x fragments {1, 4} x outer
optimizer {none, Nesterov}; the engine must train what
`reference.RefExchange` writes out. The fast tier runs a slice, the slow
tier the whole product.
"""

import copy
import itertools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import optax
import pytest

from hier_avg.algorithms import hierarchical
from hier_avg.core import fragments as fragments_lib
from hier_avg.core import outer
from hier_avg.core import periods
from tests.support import configs
from tests.support import devices
from tests.support import engines
from tests.support import reference
from tests.support import trees

LEVELS = ((2, 2), (4, 4), (8, 8))
STEPS = 17  # Two global periods and a step: windows open at the end.
COMPRESS = {'none': ('none', False), 'bf16': ('bfloat16', False),
            'int8_feedback': ('int8', True)}
OUTER = (0.7, 0.9)


def setUpModule():
  devices.set_up_devices()


def _case(compress, tau, fragments, nesterov):
  return (f'{compress}_tau{tau}_f{fragments}' +
          ('_nesterov' if nesterov else ''), compress, tau, fragments,
          nesterov)


PRODUCT = [_case(*c) for c in itertools.product(COMPRESS, (0, 2), (1, 4),
                                                (False, True))]
SLICE = [_case('int8_feedback', 2, 4, True), _case('bf16', 0, 4, False),
         _case('none', 2, 1, True)]


class _OracleTest(parameterized.TestCase):

  def check(self, compress, tau, fragments, nesterov):
    kind, feedback = COMPRESS[compress]
    data, learner, sampler = engines.bn_setup()
    per_level = lambda value, rest: (rest, rest, value)
    engine = engines.make_levels_engine(
        learner, engines.levels_hierarchy(LEVELS), (2, 2, 2),
        compress=per_level(kind, 'none'),
        error_feedback=per_level(feedback, False),
        delay=per_level(tau, 0), fragments=per_level(fragments, 1),
        outer_tx=(optax.sgd(OUTER[0], momentum=OUTER[1], nesterov=True)
                  if nesterov else None))
    state = engine.init_state(0, data.image_shape)
    start = engines.learner_states(state, grid_ndim=3)
    got = engines.learner_states(
        engines.run_engine(engine, data, sampler, STEPS, state=state),
        grid_ndim=3)
    leaves = jax.tree.leaves(start[0]['params'])
    sizes = [x.size * x.dtype.itemsize for x in leaves]
    parts = [fragments_lib.partition(sizes, 1)] * 2 + [
        fragments_lib.partition(sizes, fragments)]
    outers = ([reference.RefOuterSGD(*OUTER, True, [leaves[i] for i in part])
               for part in parts[-1]] if nesterov else None)
    ref = copy.deepcopy(start)
    reference.run(learner, ref, reference.nested_levels(8, LEVELS),
                  ('params', 'batch_stats'), data.train_images,
                  data.train_labels, sampler, STEPS,
                  compress=per_level(kind, 'none'),
                  error_feedback=per_level(feedback, False),
                  delay=per_level(tau, 0), fragments=parts, outers=outers)
    for i, (g, r) in enumerate(zip(got, ref)):
      with self.subTest(learner=i):
        for part in ('params', 'batch_stats'):
          if kind == 'none':
            trees.assert_trees_close(g[part], r[part], atol=2e-5)
          else:
            trees.assert_trees_close_but_flips(g[part], r[part], atol=2e-5,
                                               flip_atol=1e-3)


class SliceTest(_OracleTest):

  @parameterized.named_parameters(*SLICE)
  def test_matches_the_oracle(self, compress, tau, fragments, nesterov):
    self.check(compress, tau, fragments, nesterov)


@pytest.mark.slow
class ProductTest(_OracleTest):

  @parameterized.named_parameters(*[c for c in PRODUCT if c not in SLICE])
  def test_matches_the_oracle(self, compress, tau, fragments, nesterov):
    self.check(compress, tau, fragments, nesterov)


class EverythingAtOnceTest(absltest.TestCase):
  """Every option on some level at once, through phases of periods."""

  def test_matches_the_oracle(self):
    # Warmup 2, then x1, x2 from step 10 and x1 from 26 (`step` periods,
    # known up front). Level 0: 2 fragments, one step late with torchft's
    # mix; level 1: bfloat16; global: 4 fragments, two steps late, int8
    # with error feedback, a Nesterov outer optimizer on a cosine lr with
    # a warmup.
    warmup, steps = 2, 37
    starts = ((2, 1), (10, 2), (26, 1))
    data, learner, sampler = engines.bn_setup()
    hierarchy = engines.levels_hierarchy(LEVELS, sync_warmup=warmup)
    controller = periods.StepPeriods(warmup, 8, (5, 20), (2, 1))
    outer_steps = hierarchy.schedule().with_periods(controller).counts(
        steps)['global']
    # 2 warmup steps, then whole global periods ending at 10, 26 and 34.
    self.assertEqual(outer_steps, 5)
    config = configs.tiny_config(1).hier
    config.update(outer_lr=0.8, outer_momentum=0.5, outer_nesterov=True,
                  outer_warmup=2, outer_lr_schedule='cosine',
                  outer_lr_final=0.1)
    engine = engines.make_levels_engine(
        learner, hierarchy, (2, 2, 2), pack='vmap',
        outer_tx=outer.make_outer_optimizer(config, outer_steps),
        compress=('none', 'bfloat16', 'int8'),
        error_feedback=(False, False, True), delay=(1, 0, 2),
        delay_mix=(0.5, None, None), fragments=(2, 1, 4))
    engine.algorithm = hierarchical.with_periods(engine.algorithm,
                                                 controller)
    self.assertEqual(engine.schedule.phases,
                     tuple(periods.Phase(*p) for p in starts))
    state = engine.init_state(0, data.image_shape)
    start = engines.learner_states(state, grid_ndim=3)
    got = engines.learner_states(
        engines.run_engine(engine, data, sampler, steps, state=state,
                           cut_every=(3,)), grid_ndim=3)

    leaves = jax.tree.leaves(start[0]['params'])
    sizes = [x.size * x.dtype.itemsize for x in leaves]
    parts = [fragments_lib.partition(sizes, f) for f in (2, 1, 4)]
    # The outer lr of each fragment's n-th step as the engine computes it
    # (float32; `outer_schedule_test` holds it to the written-out
    # formula): this run turns the formula's float64 rounding into 1e-3.
    schedule = outer.outer_lr_schedule(config, outer_steps)
    lr_at = lambda n: float(schedule(n - 1))
    outers = [reference.RefOuterSGD(0.8, 0.5, True,
                                    [leaves[i] for i in part], lr_at=lr_at)
              for part in parts[-1]]
    ref = copy.deepcopy(start)
    reference.run(learner, ref, reference.nested_levels(8, LEVELS),
                  ('params', 'batch_stats'), data.train_images,
                  data.train_labels, sampler, steps, sync_warmup=warmup,
                  phases=starts, compress=('none', 'bfloat16', 'int8'),
                  error_feedback=(False, False, True), delay=(1, 0, 2),
                  delay_mix=(0.5, None, None), fragments=parts,
                  outers=outers)
    # The warmup's 2 outer steps each, then one an event applied: global
    # fragments apply after 4, 6, 8, 10; 14, 18, 22, 26; 28, 30, 32, 34,
    # and 36 (fragment 1's of step 38 started at 36, not yet applied).
    self.assertEqual([len(o.lrs) for o in outers], [6, 5, 5, 5])
    for i, (g, r) in enumerate(zip(got, ref)):
      with self.subTest(learner=i):
        for part in ('params', 'batch_stats'):
          trees.assert_trees_close_but_flips(g[part], r[part], atol=2e-5,
                                             flip_atol=1e-3)


if __name__ == '__main__':
  absltest.main()
