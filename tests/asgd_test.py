"""Simulated ASGD against its written-out reference, and its special case."""

from absl.testing import absltest
from absl.testing import parameterized
import pytest
import tempfile

import jax
import numpy as np

from hier_avg import config_keys
from hier_avg import train
from hier_avg.errors import UserError
from hier_avg.core.topology import hier_topology
from tests.support import collectives
from tests.support import configs
from tests.support import devices
from tests.support import engines
from tests.support import reference
from tests.support import trees

# More steps than the largest staleness tested, so stale reads happen.
STEPS = 5


def setUpModule():
  devices.set_up_devices()


def make_asgd(learner, num_learners, staleness, mesh, pack='auto',
              group_size=1):
  # ASGD has no groups; group_size only shapes the learner grid.
  topology = hier_topology(num_learners, group_size, *mesh)
  return engines.make_asgd_engine(learner, topology, staleness, pack)


class AsgdTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('stale_2_one_per_device', 4, 2, (4, 1), 'auto'),
      ('stale_3_packed', 4, 3, (2, 1), 'vmap'),
      ('fresh_gradients', 4, 0, (1, 1), 'vmap'),
  )
  def test_matches_reference(self, p, staleness, mesh, pack):
    data = engines.tiny_data()
    learner = engines.make_learner('bn', data, nesterov=True)
    engine = make_asgd(learner, p, staleness, mesh, pack)
    sampler = engines.make_sampler(data, p)
    init = engine.init_state(0, data.image_shape)
    learners = engines.learner_states(init)
    engines.guard_retraces(engine, STEPS)
    final = engines.run_engine(engine, data, sampler, STEPS, state=init)

    params, batch_stats, opt_state = reference.run_asgd(
        learner, learners[0]['params'], learners[0]['batch_stats'],
        learners[0]['opt_state'], [l['rng'] for l in learners],
        data.train_images, data.train_labels, sampler, STEPS, staleness)
    got = engines.learner_states(final)
    for i in range(p):  # Every learner holds the shared model.
      trees.assert_trees_close(got[i]['params'], params)
      trees.assert_trees_close(got[i]['batch_stats'], batch_stats)
      trees.assert_trees_close(got[i]['opt_state'], opt_state)

  @pytest.mark.slow
  def test_one_learner_without_staleness_is_plain_sgd(self):
    data = engines.tiny_data()
    learner = engines.make_learner('bn', data)
    sampler = engines.make_sampler(data, 1)
    asgd = engines.run_engine(make_asgd(learner, 1, 0, (1, 1)), data,
                              sampler, STEPS)
    plain = engines.run_engine(
        engines.make_engine(learner, 1, 1, 3, 1, (1, 1)), data, sampler,
        STEPS)
    # The same operations, fused differently by XLA: equal to 1-2 ulp.
    for part in ('params', 'batch_stats', 'opt_state'):
      trees.assert_trees_close(getattr(asgd, part),
                               getattr(plain, part), atol=1e-6, rtol=1e-6)

  @pytest.mark.slow
  def test_staleness_changes_the_result(self):
    # Guards the reference test: a stale read that silently used the
    # current model would pass it for staleness 0 only.
    data = engines.tiny_data()
    learner = engines.make_learner('bn', data)
    sampler = engines.make_sampler(data, 4)
    finals = [engines.run_engine(make_asgd(learner, 4, tau, (2, 1), 'vmap'),
                                 data, sampler, STEPS).params
              for tau in (0, 2)]
    diff = max(float(np.abs(a - b).max()) for a, b in
               zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1])))
    self.assertGreater(diff, 1e-4)

  def test_compiled_step_gathers_as_counted(self):
    # The 'bn' model's gradients (conv, BatchNorm and dense leaves, all
    # float32) travel as one buffer: one all-gather per mesh axis, as
    # `communication` reports, not one per leaf.
    data = engines.tiny_data()
    engine = make_asgd(engines.make_learner('bn', data), 8, 1, (2, 4),
                       group_size=4)
    state = engine.init_state(0, data.image_shape)
    images, labels = engine.topology.put_replicated(data.train_images,
                                           data.train_labels)
    indices = engine.topology.put_round_indices(engines.make_sampler(data, 8), 0, 1)
    gathers = collectives.count_collectives(
        'all-gather', engine.train_round(None, 1), state, images, labels,
        indices)
    self.assertEqual(gathers, 2)
    self.assertEqual(engine.communication(state)['gradient'].collectives, 2)

  def test_communication(self):
    data = engines.tiny_data()
    engine = make_asgd(engines.make_learner('mlp', data), 8, 1, (2, 4),
                       group_size=4)
    state = engine.init_state(0, data.image_shape)
    model_bytes = sum(x.nbytes // 8 for x in jax.tree.leaves(state.params))
    cost = engine.communication(state)['gradient']
    self.assertEqual(cost.bytes_per_learner, model_bytes)
    # One all-gather per dtype (float32) and mesh axis.
    self.assertEqual(cost.collectives, 2)
    self.assertEqual(engine.algorithm.event_counts(10), {'gradient': 10})


def asgd_config(**hier):
  config = configs.tiny_config(6)
  config.train.log_every = 3
  config.hier.algorithm = 'asgd'
  config.hier.update(hier)
  return config


class AsgdRunTest(absltest.TestCase):

  @pytest.mark.slow
  def test_a_run_counts_gradient_exchanges(self):
    summary = train.train_and_evaluate(asgd_config(staleness=2),
                                       tempfile.mkdtemp())
    self.assertEqual(summary['gradient_exchanges'], 6)
    # mlp on 32x32x3: 3072*128 + 128 + 128*10 + 10 float32 parameters.
    model_bytes = 4 * (3072 * 128 + 128 + 128 * 10 + 10)
    self.assertEqual(summary['gradient_bytes_per_learner'], 6 * model_bytes)
    self.assertEqual(summary['bytes_averaged_per_learner'], 6 * model_bytes)
    self.assertNotIn('global_averagings', summary)
    self.assertGreater(summary['test_accuracy'], 0.0)

  def test_settings_that_need_averaging_are_refused(self):
    for hier, message in (({'outer_lr': 0.5}, 'outer optimizer'),
                          ({'opt_state': 'reset'}, 'hier.opt_state'),
                          ({'batch_stats': 'local'}, 'hier.batch_stats'),
                          ({'staleness': -1}, 'hier.staleness=-1')):
      with self.subTest(**hier):
        with self.assertRaisesRegex(UserError, message):
          config_keys.validate(asgd_config(**hier))


if __name__ == '__main__':
  absltest.main()
