"""Fused averaging inside shard_map: group means, identity, one collective."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax.sharding import PartitionSpec
import numpy as np

from hier_avg.core import averaging
from hier_avg.core.topology import make_topology
from tests.support import collectives
from tests.support import devices
from tests.support import engines


def setUpModule():
  devices.set_up_devices()


def _average(tree, axes, topology):
  mapped = jax.shard_map(
      lambda t: averaging.average_block(t, axes, topology),
      mesh=topology.mesh, in_specs=topology.learner_spec,
      out_specs=topology.learner_spec)
  tree = jax.device_put(tree, topology.learner_sharding())
  return jax.jit(mapped)(tree)


def _tree(grid, seed=0):
  rng = np.random.default_rng(seed)
  return {'w': rng.normal(size=grid + (3, 2)).astype(np.float32),
          'b': rng.normal(size=grid + (5,)).astype(np.float32),
          'h': rng.normal(size=grid + (4,)).astype(np.float16),
          'count': np.full(grid, 7, np.int32)}


# (grid, axis names, mesh, averaged axes)
CASES = (
    ((2, 4), ('node', 'local'), (2, 4), ('local',)),
    ((2, 4), ('node', 'local'), (2, 4), ('node', 'local')),
    ((4, 4), ('node', 'local'), (2, 2), ('local',)),
    ((4, 4), ('node', 'local'), (1, 1), ('node', 'local')),
    ((2, 2, 2), ('pod', 'node', 'local'), (2, 2, 2), ('node', 'local')),
    ((2, 2, 4), ('pod', 'node', 'local'), (1, 2, 2), ('node', 'local')),
)


class AveragingTest(parameterized.TestCase):

  @parameterized.parameters(*CASES)
  def test_group_means(self, grid, names, mesh, axes):
    topology = make_topology(grid, names, mesh)
    tree = _tree(grid)
    got = jax.tree.map(np.asarray, _average(tree, axes, topology))
    reduce = tuple(i for i, a in enumerate(names) if a in axes)
    for key in ('w', 'b', 'h'):
      x = tree[key].astype(np.float64)
      want = np.broadcast_to(x.mean(axis=reduce, keepdims=True), x.shape)
      tol = 1e-3 if tree[key].dtype == np.float16 else 1e-6
      np.testing.assert_allclose(got[key], want, rtol=tol, atol=tol)
      self.assertEqual(got[key].dtype, tree[key].dtype)
    np.testing.assert_array_equal(got['count'], tree['count'])

  def test_identical_replicas_unchanged(self):
    topology = make_topology((2, 4), ('node', 'local'), (2, 4))
    one = _tree((1, 1))
    tree = jax.tree.map(lambda x: np.broadcast_to(x, (2, 4) + x.shape[2:]),
                        one)
    got = _average(tree, ('node', 'local'), topology)
    for key in tree:
      # The sum of 8 equal values over 8 is the value, up to one rounding.
      np.testing.assert_array_max_ulp(np.asarray(got[key]), tree[key],
                                      maxulp=1)

  def test_bytes_per_learner(self):
    one = jax.tree.map(lambda x: x[0, 0], _tree((1, 1)))
    # float32 6 + 5 values, float16 4 values; the int counter is not moved.
    self.assertEqual(averaging.bytes_per_learner(one), 11 * 4 + 4 * 2)


# (grid, mesh, averaged axes, all-reduces for _tree's float32 + float16)
COLLECTIVE_CASES = (
    ((2, 4), (2, 4), ('local',), 2),
    ((2, 4), (2, 4), ('node', 'local'), 2),
    ((2, 4), (2, 1), ('local',), 0),         # Groups live on one device.
    ((2, 4), (2, 1), ('node', 'local'), 2),
    ((4, 2), (1, 1), ('node', 'local'), 0),
)


class CollectivesTest(parameterized.TestCase):

  @parameterized.parameters(*COLLECTIVE_CASES)
  def test_counted_collectives_match_the_compiled_ones(self, grid, mesh, axes,
                                                       expected):
    topology = make_topology(grid, ('node', 'local'), mesh)
    tree = jax.device_put(_tree(grid), topology.learner_sharding())
    mapped = jax.jit(jax.shard_map(
        lambda t: averaging.average_block(t, axes, topology),
        mesh=topology.mesh, in_specs=topology.learner_spec,
        out_specs=topology.learner_spec))
    self.assertEqual(collectives.count_all_reduces(mapped, tree), expected)
    one = jax.tree.map(lambda x: x[0, 0], _tree(grid))
    self.assertEqual(averaging.collectives_per_event(one, axes, topology),
                     expected)

  @parameterized.parameters(((2, 4), (2, 4), 6), ((2, 4), (2, 1), 3),
                            ((4, 2), (1, 1), 0))
  def test_gather_is_one_all_gather_per_dtype_and_mesh_axis(self, grid, mesh,
                                                            expected):
    # _tree has float32, float16 and int32 leaves: 3 buffers.
    topology = make_topology(grid, ('node', 'local'), mesh)
    tree = _tree(grid)
    # The gathered grid is the same on every device.
    mapped = jax.jit(jax.shard_map(
        lambda t: averaging.gather_learners(t, topology),
        mesh=topology.mesh, in_specs=topology.learner_spec,
        out_specs=PartitionSpec(), check_vma=False))
    placed = jax.device_put(tree, topology.learner_sharding())
    self.assertEqual(
        collectives.count_collectives('all-gather', mapped, placed), expected)
    one = jax.tree.map(lambda x: x[0, 0], tree)
    self.assertEqual(averaging.gathers_per_event(one, topology), expected)
    for key, value in mapped(placed).items():
      np.testing.assert_array_equal(np.asarray(value), tree[key])

  def test_one_all_reduce_per_dtype_per_averaging(self):
    data = engines.tiny_data()
    engine = engines.make_engine(engines.make_learner('bn', data), 8, 4, 2, 2,
                                 (2, 4))
    state = engine.init_state(0, data.image_shape)
    images, labels = engine.topology.put_replicated(data.train_images,
                                           data.train_labels)
    indices = engine.topology.put_round_indices(engines.make_sampler(data, 8), 0, 2)
    args = (state, images, labels, indices)
    local, global_ = engine.schedule.levels
    self.assertEqual(
        collectives.count_all_reduces(engine.train_round(None, 2), *args), 0)
    # params and batch_stats are all float32: one fused buffer, one op.
    self.assertEqual(
        collectives.count_all_reduces(engine.train_round(local, 2), *args), 1)
    self.assertEqual(
        collectives.count_all_reduces(engine.train_round(global_, 2), *args), 1)
    costs = engine.communication(state)
    self.assertEqual((costs['local'].collectives,
                      costs['global'].collectives), (1, 1))


if __name__ == '__main__':
  absltest.main()
