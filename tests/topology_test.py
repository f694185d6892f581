"""Learner grids on device meshes."""

from absl.testing import absltest
from absl.testing import parameterized
import jax

from hier_avg.errors import UserError
from hier_avg.core.topology import hier_topology, make_topology
from tests.support import devices

# (P, S, requested mesh, devices available, expected mesh, expected block)
MESH_CASES = (
    (16, 4, (-1, -1), 8, (2, 4), (2, 1)),
    (16, 4, (-1, -1), 4, (1, 4), (4, 1)),
    (16, 4, (-1, -1), 2, (1, 2), (4, 2)),
    (16, 4, (-1, -1), 1, (1, 1), (4, 4)),
    (8, 4, (-1, -1), 8, (2, 4), (1, 1)),
    (6, 3, (-1, -1), 8, (2, 3), (1, 1)),
    (8, 4, (2, -1), 8, (2, 4), (1, 1)),
    (8, 4, (-1, 2), 8, (2, 2), (1, 2)),
    (8, 8, (-1, -1), 8, (1, 8), (1, 1)),
    (7, 7, (-1, -1), 8, (1, 7), (1, 1)),
)


def setUpModule():
  devices.set_up_devices()


class TopologyTest(parameterized.TestCase):

  @parameterized.parameters(*MESH_CASES)
  def test_default_mesh(self, p, s, requested, available, mesh, block):
    topology = hier_topology(p, s, *requested,
                             devices=jax.devices()[:available])
    self.assertEqual(topology.grid_shape, (p // s, s))
    self.assertEqual(topology.mesh_shape, mesh)
    self.assertEqual(topology.block_shape, block)

  def test_three_level_grid(self):
    topology = make_topology((2, 2, 4), ('pod', 'node', 'local'), (-1, -1, -1))
    self.assertEqual(topology.mesh_shape, (1, 2, 4))
    self.assertEqual(topology.block_shape, (2, 1, 1))

  @parameterized.named_parameters(
      ('mesh_not_dividing', (8, 4, 3, -1), 'mesh.node_devices=3 does not '
       'divide'),
      ('too_many_devices', (16, 16, 1, 16), 'only 8 exist'),
  )
  def test_errors(self, args, message):
    with self.assertRaisesRegex(UserError, message):
      hier_topology(*args)


if __name__ == '__main__':
  absltest.main()
