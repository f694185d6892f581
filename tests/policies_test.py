"""Averaging policies for BatchNorm statistics and optimizer state."""

import os
from unittest import mock

from absl.testing import absltest
import pytest
import jax
import jax.numpy as jnp
import numpy as np

from configs import cifar10
from hier_avg.data import datasets
from hier_avg.runtime import evaluation
from hier_avg.run import export
from hier_avg import models
from hier_avg.core import policies
from hier_avg import train
from hier_avg.errors import UserError
from tests.support import devices
from tests.support import engines
from tests.support import reference
from tests.support import trees

STEPS = 12


def setUpModule():
  devices.set_up_devices()


def _conv_batch_moments(params, data, seed, num_batches, batch_size):
  """The recomputed statistics of `data`'s training images, independently.

  Batches in `default_rng(seed)`'s order, as `recompute_batch_stats` draws.
  """
  order = np.random.default_rng(seed).permutation(len(data.train_images))
  images = data.train_images[order[:num_batches * batch_size]]
  return engines.tiny_bn_batch_moments(params, images, data.mean, data.std,
                                       batch_size)


class PoliciesTest(absltest.TestCase):

  def test_averaged_parts(self):
    policy = policies.AveragingPolicy
    self.assertEqual(policy('average', 'local').averaged_parts,
                     ('params', 'batch_stats'))
    self.assertEqual(policy('local', 'average').averaged_parts,
                     ('params', 'opt_state'))
    # 'recompute' keeps statistics local while training; 'reset' does not
    # average the optimizer state, it clears it.
    self.assertEqual(policy('recompute', 'reset').averaged_parts,
                     ('params',))
    self.assertTrue(policy('recompute', 'reset').recomputes_batch_stats)

  def test_reset_keeps_counts(self):
    state = {'trace': jnp.ones(3), 'count': jnp.array(7, jnp.int32)}
    reset = policies.reset_optimizer_state(state)
    np.testing.assert_array_equal(reset['trace'], np.zeros(3))
    self.assertEqual(int(reset['count']), 7)

  @pytest.mark.slow
  def test_opt_state_reset_matches_reference(self):
    data = engines.tiny_data()
    # A step schedule keeps an integer count in the optimizer state, which
    # a reset must leave alone.
    learner = engines.make_learner('bn', data, schedule='step',
                                   milestones=(1,), decay_factor=0.5)
    engine = engines.make_engine(learner, 8, 4, 2, 3, (2, 2),
                                 reset_opt_state=True)
    sampler = engines.make_sampler(data, 8)
    init = engine.init_state(0, data.image_shape)
    ref_learners = engines.learner_states(init)
    final = engines.run_engine(engine, data, sampler, STEPS - 1, state=init)
    reference.run(learner, ref_learners, reference.hier_levels(8, 4, 2, 3),
                  ('params', 'batch_stats'), data.train_images,
                  data.train_labels, sampler, STEPS - 1,
                  reset_opt_state=True)
    got = engines.learner_states(final)
    for i in range(8):
      for part in ('params', 'batch_stats', 'opt_state'):
        trees.assert_trees_close(got[i][part], ref_learners[i][part])
    # Step 11 is not an averaging step: momentum is back, counts went on.
    leaves = jax.tree.leaves(got[0]['opt_state'])
    self.assertTrue(any(np.any(x != 0) for x in leaves
                        if np.issubdtype(x.dtype, np.floating)))
    self.assertIn(STEPS - 1, [int(x) for x in leaves
                              if np.issubdtype(x.dtype, np.integer)])

  @pytest.mark.slow
  def test_local_and_averaged_statistics_give_the_same_global_model(self):
    # Running statistics are a linear moving average and never feed back
    # into training, so averaging them changes no global mean.
    data = engines.tiny_data()
    learner = engines.make_learner('bn', data)
    sampler = engines.make_sampler(data, 8)
    results = []
    for average in (('params', 'batch_stats'), ('params',)):
      engine = engines.make_engine(learner, 8, 4, 2, 3, (2, 2), average)
      # Ends on step 10, a local averaging.
      state = engines.run_engine(engine, data, sampler, 10)
      results.append((state, engine.kernels.global_average(state)))
    (averaged, (p1, s1)), (local, (p2, s2)) = results
    # Two programs (one averages the statistics): to float32 rounding.
    trees.assert_trees_close(p1, p2, atol=1e-6, rtol=1e-6)
    trees.assert_trees_close(s1, s2, atol=1e-6, rtol=1e-6)
    # ...while two learners of one group hold their own statistics only
    # under 'local'.
    stats = np.asarray(jax.tree.leaves(local.batch_stats)[0])
    self.assertGreater(float(np.abs(stats[0, 0] - stats[0, 1]).max()), 1e-4)
    stats = np.asarray(jax.tree.leaves(averaged.batch_stats)[0])
    np.testing.assert_array_equal(stats[0, 0], stats[0, 1])

  @pytest.mark.slow
  def test_recomputed_statistics_are_the_batch_mean_and_variance(self):
    data = engines.tiny_data()
    learner = engines.make_learner('bn', data)
    engine = engines.make_engine(learner, 8, 4, 2, 3, (2, 4))
    state = engines.run_engine(engine, data, engines.make_sampler(data, 8), 6)
    params, batch_stats = engine.kernels.global_average(state)
    got = evaluation.recompute_batch_stats(
        engine, params, batch_stats, data.train_images, num_batches=5,
        batch_size=16, seed=3)

    bn = got['BatchNorm_0']
    want_mean, want_var = _conv_batch_moments(params, data, seed=3,
                                              num_batches=8, batch_size=16)
    np.testing.assert_allclose(bn['mean'], want_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn['var'], want_var, rtol=1e-4, atol=1e-5)
    # Unlike the running averages the learners carried.
    self.assertGreater(
        float(np.abs(bn['mean'] - batch_stats['BatchNorm_0']['mean']).max()),
        1e-3)

  def test_models_without_batchnorm_need_no_recompute(self):
    data = engines.tiny_data()
    engine = engines.make_engine(engines.make_learner('mlp', data), 8, 4, 2,
                                 3, (2, 4))
    state = engine.init_state(0, data.image_shape)
    params, batch_stats = engine.kernels.global_average(state)
    self.assertEqual(
        evaluation.recompute_batch_stats(engine, params, batch_stats,
                                         data.train_images, 4, 16, 0), {})



def _tiny_bn(num_classes, layers):
  return engines.TinyBNNet(num_classes=num_classes, layers=layers)


@pytest.mark.slow
class RecomputeRunTest(absltest.TestCase):

  def test_whole_run_exports_the_recomputed_statistics(self):
    config = cifar10.get_config('cpu')
    config.model.name = 'tiny_bn'
    config.data.name = 'synthetic'
    config.data.synthetic_image_size = engines.IMAGE_SIZE
    config.data.synthetic_train_examples = 512
    config.data.synthetic_test_examples = 64
    config.data.batch_size = 16
    config.hier.batch_stats = 'recompute'
    config.hier.recompute_batches = 5  # One per device: 8.
    config.train.steps = 4
    workdir = self.create_tempdir().full_path
    with mock.patch.dict(models.MODELS, {'tiny_bn': _tiny_bn}):
      summary = train.train_and_evaluate(config, workdir)
    self.assertTrue(np.isfinite(summary['test_loss']))
    model = export.load_model(os.path.join(workdir, export.MODEL_FILE))
    data = datasets.load(config.data, config.seed)
    want_mean, want_var = _conv_batch_moments(
        model['params'], data, config.seed, num_batches=8, batch_size=16)
    bn = model['batch_stats']['BatchNorm_0']
    np.testing.assert_allclose(bn['mean'], want_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn['var'], want_var, rtol=1e-4, atol=1e-5)


if __name__ == '__main__':
  absltest.main()
