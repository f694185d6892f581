"""`hier.outer_lr_schedule`: the outer lr per outer step, against the
formula written out and the plain-loop oracle; exact resumption."""

import math

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
import optax

from hier_avg import algorithms, config_keys
from hier_avg.core import outer
from hier_avg.errors import UserError
from hier_avg.run import checkpoint
from tests.support import devices
from tests.support import engines
from tests.support import reference
from tests.support import trees


def setUpModule():
  devices.set_up_devices()


def hier_config(**overrides):
  """The `hier` block at its defaults, with `overrides`."""
  config = config_keys.defaults().hier
  config.update(overrides)
  return config


# P = 4, S = 2, K1 = 1, K2 = 2: a global averaging (an outer step) every 2
# steps, a local one between; 12 steps are 6 outer steps.
P, S, K1, K2, STEPS = 4, 2, 1, 2, 12
COSINE = dict(num_learners=P, group_size=S, k1=K1, k2=K2, outer_lr=0.8,
              outer_momentum=0.5, outer_nesterov=True,
              outer_lr_schedule='cosine', outer_warmup=2, outer_lr_final=0.1)


def outer_lrs(tx, steps):
  """The lr of each of `steps` outer steps, read from `tx`'s updates of
  a pseudo-gradient of 1 without momentum."""
  params = {'w': np.zeros((), np.float32)}
  state = tx.init(params)
  lrs = []
  for _ in range(steps):
    update, state = tx.update({'w': np.ones((), np.float32)}, state, params)
    lrs.append(-float(update['w']))
  return lrs


class ScheduleTest(parameterized.TestCase):

  @parameterized.parameters(
      ('cosine', 2, 10, 0.1), ('cosine', 0, 6, 0.0), ('cosine', 1, 5, 0.3),
      ('constant', 3, None, 0.0), ('constant', 0, None, 0.0))
  def test_lr_per_outer_step_is_the_formula(self, schedule, warmup, n, final):
    config = hier_config(outer_lr=0.8, outer_lr_schedule=schedule,
                         outer_warmup=warmup, outer_lr_final=final)
    steps = n or 8
    tx = optax.sgd(outer.outer_lr_schedule(config, n))
    want = reference.outer_lr_at(0.8, warmup, schedule, n, final)
    np.testing.assert_allclose(outer_lrs(tx, steps),
                               [want(i) for i in range(1, steps + 1)],
                               rtol=1e-6)

  def test_first_and_last_outer_steps(self):
    # lr 0.8, warmup 2, 10 outer steps, final 0.1: step 1 is half the
    # warmup, steps 2 and 3 the peak, step 10 is t = 7 of 8 of the cosine.
    tx = outer.make_outer_optimizer(hier_config(
        outer_lr=0.8, outer_lr_schedule='cosine', outer_warmup=2,
        outer_lr_final=0.1), 10)
    lrs = outer_lrs(tx, 10)
    np.testing.assert_allclose(lrs[:3], [0.4, 0.8, 0.8], rtol=1e-6)
    np.testing.assert_allclose(
        lrs[-1], 0.1 + 0.7 * 0.5 * (1 + math.cos(math.pi * 7 / 8)),
        rtol=1e-6)
    self.assertTrue(all(a > b for a, b in zip(lrs[2:], lrs[3:])))

  def test_a_schedule_makes_lr_1_an_optimizer(self):
    self.assertIsNone(outer.make_outer_optimizer(hier_config()))
    self.assertIsNotNone(outer.make_outer_optimizer(
        hier_config(outer_warmup=2)))
    self.assertIsNotNone(outer.make_outer_optimizer(
        hier_config(outer_lr_schedule='cosine'), 5))

  def test_outer_steps_of_a_run(self):
    self.assertEqual(algorithms.outer_steps(hier_config(**COSINE), STEPS, 4),
                     6)
    # Levels (2, 2), (4, 4) after 2 steps of sync warmup: outer steps at
    # 1, 2, 6, 10, 14: 5 in 15 steps.
    levels = hier_config(num_learners=4, levels=((2, 2), (4, 4)),
                         sync_warmup_steps=2)
    self.assertEqual(algorithms.outer_steps(levels, 15, 4), 5)
    # 'step' periods: x2 from epoch 1 (step 4) on: outer steps at 2, 4,
    # then every 4 steps: 8, 12.
    stepped = hier_config(**COSINE, period_schedule='step',
                          period_milestones=(1,), period_factors=(2,))
    self.assertEqual(algorithms.outer_steps(stepped, STEPS, 4), 4)
    self.assertIsNone(algorithms.outer_steps(
        hier_config(**COSINE, period_schedule='adaptive'), STEPS, 4))

  def test_a_warmup_as_long_as_the_run_is_refused(self):
    config = hier_config(**dict(COSINE, outer_warmup=6))
    with self.assertRaisesRegex(UserError, 'hier.outer_warmup=6 must be '
                                "below the run's 6 outer steps") as e:
      outer.make_outer_optimizer(config, 6)
    self.assertNotIn('\n', str(e.exception))

  def test_a_resumption_with_another_length_is_refused(self):
    checkpoint.check_outer_horizon(6, 6, 'run')
    checkpoint.check_outer_horizon(None, 6, 'run')
    with self.assertRaisesRegex(UserError, 'over 6 outer steps; this run '
                                'has 9'):
      checkpoint.check_outer_horizon(6, 9, 'run')


class EngineTest(absltest.TestCase):
  """A 2-level engine with an outer lr schedule, against the oracle."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = engines.tiny_data()
    cls.learner = engines.make_learner('mlp', cls.data)
    cls.sampler = engines.make_sampler(cls.data, P)
    config = hier_config(**COSINE)
    cls.outer_steps = algorithms.outer_steps(config, STEPS, 4)
    cls.engine = cls.make_engine(
        outer.make_outer_optimizer(config, cls.outer_steps))
    # Rounds donate the state: the oracle's copy is taken first.
    init = cls.engine.init_state(0, cls.data.image_shape)
    cls.ref_learners = engines.learner_states(init)
    cls.final = cls.train(cls.engine, STEPS, init)

  @classmethod
  def make_engine(cls, outer_tx):
    return engines.make_engine(cls.learner, P, S, K1, K2, (2, 2),
                               outer_tx=outer_tx)

  @classmethod
  def train(cls, engine, steps, state, first_step=0):
    return engines.run_engine(engine, cls.data, cls.sampler, steps,
                              state=state, first_step=first_step)

  def test_constant_is_todays_outer_sgd_exactly(self):
    config = hier_config(outer_lr=0.7, outer_momentum=0.9,
                         outer_lr_schedule='constant')
    runs = [self.make_engine(tx) for tx in (
        outer.make_outer_optimizer(config, self.outer_steps),
        optax.sgd(0.7, momentum=0.9))]
    # The same programs, so equal to the last bit on any CPU.
    engines.assert_same_programs(*runs, self.data, self.sampler, 6)
    got, today = [self.train(e, 6, e.init_state(0, self.data.image_shape))
                  for e in runs]
    for part in ('params', 'opt_state', 'outer'):
      jax.tree.map(np.testing.assert_array_equal, getattr(got, part),
                   getattr(today, part))

  def test_cosine_with_warmup_matches_reference(self):
    self.assertEqual(self.outer_steps, 6)
    ref_learners = self.ref_learners
    lr_at = reference.outer_lr_at(0.8, 2, 'cosine', self.outer_steps, 0.1)
    ref_outer = reference.RefOuterSGD(0.8, 0.5, True,
                                      anchor=ref_learners[0]['params'],
                                      lr_at=lr_at)
    reference.run(self.learner, ref_learners,
                  reference.hier_levels(P, S, K1, K2), ('params',),
                  self.data.train_images, self.data.train_labels,
                  self.sampler, STEPS, outer=ref_outer)
    self.assertLen(ref_outer.lrs, 6)
    got = engines.learner_states(self.final)
    for i in range(P):
      trees.assert_trees_close(got[i]['params'], ref_learners[i]['params'],
                               atol=1e-5)
    trees.assert_trees_close(got[0]['outer']['anchor'], ref_outer.anchor,
                             atol=1e-5)

  def test_resume_across_an_outer_step_is_exact(self):
    # Stopped at step 5: after outer steps 1 and 2 (the warmup), mid way
    # to the third; the schedule's count is in the checkpointed state.
    straight, part, resumed = engines.straight_and_resumed(
        self.engine, self.data, self.sampler, STEPS, 5,
        self.create_tempdir().full_path)
    counts = [np.asarray(x) for x in jax.tree.leaves(
        part.outer.value['opt_state']) if np.asarray(x).dtype == np.int32]
    self.assertNotEmpty(counts)
    for count in counts:
      np.testing.assert_array_equal(count, 2)
    for name in ('params', 'opt_state', 'outer'):
      jax.tree.map(np.testing.assert_array_equal, getattr(resumed, name),
                   getattr(straight, name))


if __name__ == '__main__':
  absltest.main()
