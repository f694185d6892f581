"""State that a group holds alike is stored once per device, and
checkpoints keep it once per group, so a run resumes on another mesh."""

from absl.testing import absltest
import jax
import numpy as np
import optax

from hier_avg.core import state as state_lib
from tests.support import devices
from tests.support import engines

LEVELS = ((2, 2), (8, 6))
# Everything that keeps a per-group copy: Nesterov outer (anchor and
# momentum), compressed levels' anchors, error feedback's residuals, and a
# late averaging's mean in flight.
OPTIONS = dict(outer_tx=optax.sgd(0.7, momentum=0.9, nesterov=True),
               compress=('bfloat16', 'int8'), error_feedback=(True, True),
               delay=(0, 1))


def setUpModule():
  devices.set_up_devices()


def _engine(mesh):
  data, learner, sampler = engines.bn_setup()
  engine = engines.make_levels_engine(
      learner, engines.levels_hierarchy(LEVELS), mesh, pack='vmap',
      **OPTIONS)
  return engine, data, sampler


def _one_learner_bytes(tree) -> int:
  """The bytes of one learner's copy of `tree` (grid axes leading)."""
  return sum(x[0, 0].nbytes for x in jax.tree.leaves(tree))


def _comparable(state):
  return state.replace(rng=jax.random.key_data(state.rng))


class StoredOnceTest(absltest.TestCase):

  def test_eight_learners_on_one_device_keep_one_copy_per_group(self):
    engine, data, _ = _engine((1, 1))
    found = engine.state_bytes_by_part(data.image_shape)
    view = state_lib.per_learner(engine.init_state(0, data.image_shape),
                                 (4, 2))
    # Each part as one learner holds it; the params are kept per learner.
    self.assertEqual(found['params'], 8 * _one_learner_bytes(view.params))
    # The outer state and the global level's anchor: one copy for all 8;
    # the local level's anchor: one per node of 2 learners (4); the
    # global level's residual: one per node (4), the local one's: one
    # per learner (8).
    self.assertEqual(found['outer'], _one_learner_bytes(view.outer))
    anchor = view.comm['anchor']
    self.assertEqual(found['comm/anchor'],
                     _one_learner_bytes(anchor['global']) +
                     4 * _one_learner_bytes(anchor['local']))
    residual = view.comm['residual']
    self.assertEqual(found['comm/residual'],
                     4 * _one_learner_bytes(residual['global']) +
                     8 * _one_learner_bytes(residual['local']))

  def test_a_device_of_one_learner_keeps_its_own_copy(self):
    engine, data, _ = _engine((4, 2))
    state = engine.init_state(0, data.image_shape)
    for leaf in jax.tree.leaves(state.outer):
      self.assertEqual(leaf.shape[:2], (4, 2))
      self.assertEqual(leaf.sharding.shard_shape(leaf.shape)[:2], (1, 1))


class PortableTest(absltest.TestCase):

  def test_a_checkpoint_restores_on_another_mesh(self):
    # Stopped at step 7, inside the global window: a late averaging in
    # flight, residuals and anchors set; saved on 8 devices, restored on
    # 1 and on 2 x 2, every learner holds what it held.
    engine, data, sampler = _engine((4, 2))
    state = engines.run_engine(engine, data, sampler, 7)
    before = state_lib.per_learner(state, (4, 2))
    self.assertGreater(max(float(np.abs(x).max()) for x in jax.tree.leaves(
        before.comm['residual']['global'])), 0)
    for mesh in ((1, 1), (2, 2)):
      other, _, _ = _engine(mesh)
      restored = engines.checkpoint_round_trip(
          engine, state, 7, other.init_state(1, data.image_shape),
          self.create_tempdir().full_path, restore_with=other)
      # Placed as the other engine's fresh state: its rounds take it.
      self.assertEqual(
          restored.outer.value['anchor']['Dense_0']['kernel'].shape[:2],
          mesh)
      jax.tree.map(np.testing.assert_array_equal,
                   _comparable(state_lib.per_learner(restored, (4, 2))),
                   _comparable(before))


if __name__ == '__main__':
  absltest.main()
