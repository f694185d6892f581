"""Per-learner sampling is disjoint, reproducible and a pure function."""

from absl.testing import absltest
import numpy as np

from hier_avg.errors import UserError
from hier_avg.data.sampling import Sampler


class SamplingTest(absltest.TestCase):

  def test_partition_disjoint_within_epoch(self):
    sampler = Sampler(1000, 8, 10, 'partition', seed=3)
    self.assertEqual(sampler.steps_per_epoch, 12)
    for epoch in range(2):
      steps = range(epoch * 12, (epoch + 1) * 12)
      seen = np.concatenate([sampler.indices(t).ravel() for t in steps])
      self.assertLen(seen, 8 * 12 * 10)
      self.assertLen(np.unique(seen), len(seen))
      self.assertTrue(((seen >= 0) & (seen < 1000)).all())

  def test_epochs_and_learners_differ(self):
    sampler = Sampler(1000, 4, 10, 'partition', seed=0)
    a, b = sampler.indices(0), sampler.indices(sampler.steps_per_epoch)
    self.assertFalse(np.array_equal(a, b))
    self.assertFalse(np.array_equal(a[0], a[1]))

  def test_identical_across_restarts(self):
    for mode in ('partition', 'iid'):
      first = Sampler(500, 4, 8, mode, seed=7)
      again = Sampler(500, 4, 8, mode, seed=7)
      # Restarting at step 37 gives what the first run drew at step 37,
      # without replaying any earlier step.
      np.testing.assert_array_equal(again.indices(37), first.indices(37))
      other_seed = Sampler(500, 4, 8, mode, seed=8)
      self.assertFalse(np.array_equal(other_seed.indices(37),
                                      first.indices(37)))

  def test_iid_in_range_and_shaped(self):
    indices = Sampler(50, 3, 16, 'iid', seed=0).indices(5)
    self.assertEqual(indices.shape, (3, 16))
    self.assertEqual(indices.dtype, np.int32)
    self.assertTrue(((indices >= 0) & (indices < 50)).all())

  def test_batch_larger_than_shard(self):
    with self.assertRaisesRegex(UserError, 'data.batch_size=20 is larger'):
      Sampler(100, 8, 20, 'partition', seed=0)


if __name__ == '__main__':
  absltest.main()
