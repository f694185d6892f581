"""Simulated ASGD against its written-out reference, and its special case."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from hier_avg.asgd import AsgdEngine
from hier_avg.topology import hier_topology
from tests import helpers
from tests import reference

STEPS = 7


def setUpModule():
  helpers.set_up_devices()


def make_asgd(learner, num_learners, staleness, mesh, pack='auto',
              group_size=1):
  # ASGD has no groups; group_size only shapes the learner grid.
  topology = hier_topology(num_learners, group_size, *mesh)
  return AsgdEngine(learner, topology, staleness, pack=pack)


class AsgdTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('stale_2_one_per_device', 4, 2, (4, 1), 'auto'),
      ('stale_3_packed', 4, 3, (2, 1), 'vmap'),
      ('fresh_gradients', 4, 0, (1, 1), 'auto'),
  )
  def test_matches_reference(self, p, staleness, mesh, pack):
    data = helpers.tiny_data()
    learner = helpers.make_learner('bn', data, nesterov=True)
    engine = make_asgd(learner, p, staleness, mesh, pack)
    sampler = helpers.make_sampler(data, p)
    init = engine.init_state(0, data.image_shape)
    learners = helpers.learner_states(init)
    final = helpers.run_engine(engine, data, sampler, STEPS, state=init)

    params, batch_stats, opt_state = reference.run_asgd(
        learner, learners[0]['params'], learners[0]['batch_stats'],
        learners[0]['opt_state'], [l['rng'] for l in learners],
        data.train_images, data.train_labels, sampler, STEPS, staleness)
    got = helpers.learner_states(final)
    for i in range(p):  # Every learner holds the shared model.
      helpers.assert_trees_close(self, got[i]['params'], params)
      helpers.assert_trees_close(self, got[i]['batch_stats'], batch_stats)
      helpers.assert_trees_close(self, got[i]['opt_state'], opt_state)
    self.assertEqual(set(engine.trace_counts.values()), {1})

  def test_one_learner_without_staleness_is_plain_sgd(self):
    data = helpers.tiny_data()
    learner = helpers.make_learner('bn', data)
    sampler = helpers.make_sampler(data, 1)
    asgd = helpers.run_engine(make_asgd(learner, 1, 0, (1, 1)), data,
                              sampler, STEPS)
    plain = helpers.run_engine(
        helpers.make_engine(learner, 1, 1, 3, 1, (1, 1)), data, sampler,
        STEPS)
    # The same operations, fused differently by XLA: equal to 1-2 ulp.
    for part in ('params', 'batch_stats', 'opt_state'):
      helpers.assert_trees_close(self, getattr(asgd, part),
                                 getattr(plain, part), atol=1e-6, rtol=1e-6)

  def test_staleness_changes_the_result(self):
    # Guards the reference test: a stale read that silently used the
    # current model would pass it for staleness 0 only.
    data = helpers.tiny_data()
    learner = helpers.make_learner('bn', data)
    sampler = helpers.make_sampler(data, 4)
    finals = [helpers.run_engine(make_asgd(learner, 4, tau, (1, 1)), data,
                                 sampler, STEPS).params
              for tau in (0, 2)]
    diff = max(float(np.abs(a - b).max()) for a, b in
               zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1])))
    self.assertGreater(diff, 1e-4)

  def test_communication(self):
    data = helpers.tiny_data()
    engine = make_asgd(helpers.make_learner('mlp', data), 8, 1, (2, 4),
                       group_size=4)
    state = engine.init_state(0, data.image_shape)
    model_bytes = sum(x.nbytes // 8 for x in jax.tree.leaves(state.params))
    cost = engine.communication(state)['gradient']
    self.assertEqual(cost.bytes_per_learner, model_bytes)
    self.assertEqual(cost.collectives, 2)  # One all-gather per mesh axis.
    self.assertEqual(engine.event_counts(10), {'gradient': 10})


if __name__ == '__main__':
  absltest.main()
