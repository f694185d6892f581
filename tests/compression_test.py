"""Compressed averaging (`hier.compress`, `hier.error_feedback`)."""

import re

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hier_avg import config_keys
from hier_avg.core import averaging
from hier_avg.core import compression
from hier_avg.core.hierarchy import Hierarchy
from hier_avg.core.topology import make_topology
from hier_avg.runtime import communication
from tests.support import configs
from tests.support import devices
from tests.support import engines
from tests.support import reference
from tests.support import trees

LEVELS = ((2, 2), (8, 6))
STEPS = 12


def setUpModule():
  devices.set_up_devices()


def _hierarchy(levels=LEVELS):
  return engines.levels_hierarchy(levels)


class QuantizationTest(parameterized.TestCase):

  @parameterized.parameters('bfloat16', 'int8', 'int4')
  def test_matches_the_written_out_compression(self, kind):
    rng = np.random.default_rng(0)
    # Three int8 blocks and a part (an odd count: int4's last byte holds
    # one value): one block all zero, one with a single large value.
    x = rng.normal(size=(2, 3 * 256 + 101)).astype(np.float32)
    x[0, 256:512] = 0
    x[1, 10] = 1e3
    got = np.asarray(compression.dequantize(compression.quantize(x, kind),
                                            kind, x.shape[-1]))
    for row, want in zip(got, x):
      # To float32 rounding, not the bit: XLA may divide by the constant
      # 127 or 7 as a multiplication by its reciprocal (one ulp apart).
      np.testing.assert_allclose(row, reference.compress_values(want, kind),
                                 rtol=5e-7, atol=0)

  def test_int4_packs_two_values_a_byte(self):
    # Values -7..7 and 0 land in bytes as (v + 8) low nibble first.
    x = jnp.asarray([[7.0, -7.0, 0.0, 1.0, -1.0]])
    payload = compression.quantize(x, 'int4')
    self.assertEqual(payload['values'].dtype, jnp.uint8)
    np.testing.assert_array_equal(
        payload['values'], [[15 | 1 << 4, 8 | 9 << 4, 7 | 8 << 4]])
    np.testing.assert_array_equal(payload['scales'], [[1.0]])
    self.assertEqual(compression.payload_bytes(600, 'int4'),
                     300 + 10 * 4)
    self.assertEqual(compression.payload_bytes(601, 'int4'),
                     301 + 10 * 4)

  def test_int8_payload_dtypes_and_bytes(self):
    payload = compression.quantize(jnp.ones((3, 600)), 'int8')
    self.assertEqual(payload['values'].dtype, jnp.int8)
    self.assertEqual(payload['values'].shape, (3, 600))
    self.assertEqual(payload['scales'].shape, (3, 3))
    self.assertEqual(compression.payload_bytes(600, 'int8'), 600 + 3 * 4)
    self.assertEqual(compression.payload_bytes(600, 'bfloat16'), 1200)
    self.assertEqual(compression.payload_bytes(600, 'none'), 2400)

  def test_error_feedback_telescopes(self):
    # One learner averaging alone: it sends its change plus the residual,
    # and keeps what compression lost. Over many events what was sent plus
    # the last residual is every change made, up to float32 rounding.
    topology = make_topology((1, 1), ('node', 'local'), (1, 1))
    rng = np.random.default_rng(1)
    anchor = {'w': jnp.zeros((1, 1, 1000), jnp.float32)}
    residual = {'w': jnp.zeros((1, 1, 1000), jnp.float32)}
    changes, sent = 0.0, 0.0
    for _ in range(20):
      change = rng.normal(size=(1, 1, 1000)).astype(np.float32) * 1e-2
      params = {'w': anchor['w'] + change}
      averaged, residual = averaging.average_compressed(
          params, anchor, residual, ('node', 'local'), (), topology, 'int8')
      changes += change.astype(np.float64)
      sent += np.asarray(averaged['w'] - anchor['w'], np.float64)
      anchor = averaged
    np.testing.assert_allclose(sent + np.asarray(residual['w']), changes,
                               atol=1e-5)
    self.assertGreater(np.abs(np.asarray(residual['w'])).max(), 0)


def _train(engine, data, sampler, steps):
  return engines.run_engine(engine, data, sampler, steps)


@pytest.mark.slow
class EngineTest(parameterized.TestCase):

  def _setup(self):
    return engines.bn_setup()

  def test_none_is_todays_averaging_bit_for_bit(self):
    data, learner, sampler = self._setup()
    plain_engine = engines.make_levels_engine(learner, _hierarchy(), (2, 2))
    none_engine = engines.make_levels_engine(learner, _hierarchy(), (2, 2),
                                             compress=('none', 'none'))
    # The same programs, so equal to the last bit on any CPU.
    engines.assert_same_programs(plain_engine, none_engine, data, sampler,
                                 STEPS)
    plain = _train(plain_engine, data, sampler, STEPS)
    none = _train(none_engine, data, sampler, STEPS)
    jax.tree.map(np.testing.assert_array_equal, plain.params, none.params)
    self.assertIsNone(none.comm)

  @parameterized.named_parameters(
      ('int8_outer', ('none', 'int8'), (False, False), (2, 2)),
      ('bf16_inner_int8_outer_feedback', ('bfloat16', 'int8'),
       (False, True), (2, 2)),
      ('int8_both_feedback_one_device', ('int8', 'int8'), (True, True),
       (1, 1)),
      ('int4_outer_feedback', ('none', 'int4'), (False, True), (2, 2)),
      ('three_levels', ('int8', 'none', 'bfloat16'), (True, False, False),
       (2, 2, 2)))
  def test_matches_the_oracle(self, kinds, feedback, mesh):
    levels = LEVELS if len(kinds) == 2 else ((2, 2), (4, 4), (8, 8))
    data, learner, sampler = self._setup()
    engine = engines.make_levels_engine(
        learner, _hierarchy(levels), mesh, compress=kinds,
        error_feedback=feedback)
    start = engine.init_state(0, data.image_shape)
    ref = engines.learner_states(start, grid_ndim=len(mesh))
    state = _train(engine, data, sampler, STEPS)
    reference.run(learner, ref, reference.nested_levels(8, levels),
                  ('params', 'batch_stats'), data.train_images,
                  data.train_labels, sampler, STEPS, compress=kinds,
                  error_feedback=feedback)
    got = engines.learner_states(state, grid_ndim=len(mesh))
    for i, (g, r) in enumerate(zip(got, ref)):
      with self.subTest(learner=i):
        trees.assert_trees_close(g['params'], r['params'], atol=2e-5)
    # Compression changed something: the run is not plain averaging.
    plain = _train(engines.make_levels_engine(learner, _hierarchy(levels),
                                              mesh), data, sampler, STEPS)
    self.assertFalse(all(jax.tree.leaves(jax.tree.map(
        lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
        state.params, plain.params))))


  def test_resume_is_exact(self):
    # Stopped at step 9: after the global averaging of step 6 and a local
    # one at 8, with residuals kept; anchors and residuals come back from
    # the checkpoint and the run goes on as if never stopped.
    data, learner, sampler = self._setup()
    engine = engines.make_levels_engine(
        learner, _hierarchy(), (2, 2), compress=('bfloat16', 'int8'),
        error_feedback=(True, True))
    straight, part, resumed = engines.straight_and_resumed(
        engine, data, sampler, STEPS, 9, self.create_tempdir().full_path)
    self.assertGreater(max(float(jnp.abs(x).max()) for x in jax.tree.leaves(
        part.comm['residual']['global'])), 0)
    for name in ('params', 'opt_state', 'comm'):
      jax.tree.map(np.testing.assert_array_equal, getattr(resumed, name),
                   getattr(straight, name))


def _collectives(hlo: str) -> list:
  """(op, dtype, shape, replica groups) of every collective of a compiled
  program (an all-to-all's first operand: its parts are alike)."""
  pattern = (r'= \(?(\w+)\[([\d,]*)\][^=]*? (all-to-all|all-gather|'
             r'all-reduce|reduce-scatter)(?:-start)?\(.*?replica_groups='
             r'(\{[\d,{}]*\})')
  return sorted((m[3], m[1], m[2], m[4]) for m in re.finditer(pattern, hlo))


class CollectivesTest(absltest.TestCase):
  """2 x 4 learners on 2 x 4 devices (one learner per device): devices
  0-3 are node 0's, 4-7 node 1's."""

  INSIDE = '{{0,1,2,3},{4,5,6,7}}'
  ACROSS = '{{0,4},{1,5},{2,6},{3,7}}'
  EVERYONE = '{{0,1,2,3,4,5,6,7}}'

  def _rounds(self, compress):
    data = engines.tiny_data()
    engine = engines.make_levels_engine(
        engines.make_learner('bn', data), Hierarchy(8, (4, 8), (2, 4)),
        (2, 4), compress=compress)
    state = engine.init_state(0, data.image_shape)
    images, labels = engine.topology.put_replicated(data.train_images,
                                                    data.train_labels)
    indices = engine.topology.put_round_indices(
        engines.make_sampler(data, 8), 0, 2)
    one = engines.learner_states(state)[0]
    n = sum(x.size for x in jax.tree.leaves(one['params']))
    stats = sum(x.size for x in jax.tree.leaves(one['batch_stats']))
    collectives = {level.name: _collectives(engine.train_round(level, 2).lower(
        state, images, labels, indices).compile().as_text())
                   for level in engine.schedule.levels}
    return collectives, engine.communication(state), n, stats

  def test_between_nodes_travels_one_compressed_payload_per_node(self):
    collectives, costs, n, stats = self._rounds(('bfloat16', 'int8'))
    # Global, int8: node 0's 4 learners reduce their change in float32,
    # each device keeping a quarter (padded to whole blocks: 4 devices x 2
    # nodes x 256), send those quarters' int8 halves to the other node,
    # all-gather the int8 means back, then the float32 quarters inside.
    padded = -(-n // 2048) * 2048
    quarter = padded // 4
    self.assertEqual(collectives['global'], sorted([
        ('all-reduce', 'f32', f'1,1,{stats}', self.EVERYONE),
        ('reduce-scatter', 'f32', f'1,1,{quarter}', self.INSIDE),
        ('all-to-all', 's8', f'1,1,1,{quarter // 2}', self.ACROSS),
        ('all-to-all', 'f32', f'1,1,1,{quarter // 2 // 256}', self.ACROSS),
        ('all-gather', 's8', f'1,1,{quarter}', self.ACROSS),
        ('all-gather', 'f32', f'1,1,{quarter // 256}', self.ACROSS),
        ('all-gather', 'f32', f'1,1,{padded}', self.INSIDE)]))
    # So what crosses between the nodes is, over a node's 4 devices, one
    # int8 payload of the node's padded model (and its scales), not 4.
    # Local, bfloat16, the innermost: each learner its own group of one,
    # its 16 bits cut in 4 among the node's devices.
    padded = -(-n // 4) * 4
    self.assertEqual(collectives['local'], sorted([
        ('all-reduce', 'f32', f'1,1,{stats}', self.INSIDE),
        ('all-to-all', 'u16', f'1,1,1,{padded // 4}', self.INSIDE),
        ('all-gather', 'u16', f'1,1,{padded}', self.INSIDE)]))
    # The counted bytes: a learner's share of its node's one payload
    # between the nodes, its float32 model inside.
    payload = n + 4 * -(-n // 256)
    self.assertEqual(costs['global'].between_hosts_bytes_per_learner,
                     payload / 4 + 4 * stats)
    self.assertEqual(costs['global'].bytes_per_learner,
                     4 * n + payload / 4 + 4 * stats)
    self.assertEqual(costs['local'].bytes_per_learner, 2 * n + 4 * stats)
    self.assertEqual(costs['local'].between_hosts_bytes_per_learner, 0)
    # The counters: per level and in all, between and inside hosts.
    counts = {'local': 3, 'global': 2}
    row = communication.counters(costs, counts)
    self.assertEqual(row['global_bytes_between_hosts_per_learner'],
                     round(2 * (payload / 4 + 4 * stats)))
    self.assertEqual(row['global_bytes_inside_hosts_per_learner'],
                     round(2 * (4 * n + payload / 4 + 4 * stats)) -
                     round(2 * (payload / 4 + 4 * stats)))
    self.assertEqual(row['local_bytes_between_hosts_per_learner'], 0)
    self.assertEqual(row['bytes_between_hosts_per_learner'],
                     row['global_bytes_between_hosts_per_learner'])
    self.assertEqual(row['bytes_inside_hosts_per_learner'],
                     row['global_bytes_inside_hosts_per_learner'] +
                     3 * (2 * n + 4 * stats))
    self.assertEqual(row['bytes_averaged_per_learner'],
                     row['bytes_between_hosts_per_learner'] +
                     row['bytes_inside_hosts_per_learner'])
    # Per dtype: reduce-scatter and all-gather inside, an all-to-all and
    # an all-gather per payload array between; the statistics' all-reduce.
    self.assertEqual(costs['global'].collectives, 2 + 2 * 2 + 1)
    self.assertEqual(costs['local'].collectives, 2 + 1)

  def test_int4_travels_as_packed_bytes(self):
    collectives, costs, n, stats = self._rounds(('int4', 'none'))
    padded = -(-n // 256) * 256  # 4 devices x 64 values a block.
    self.assertEqual(collectives['local'], sorted([
        ('all-reduce', 'f32', f'1,1,{stats}', self.INSIDE),
        ('all-to-all', 'u8', f'1,1,1,{padded // 8}', self.INSIDE),
        ('all-to-all', 'f32', f'1,1,1,{padded // 4 // 64}', self.INSIDE),
        ('all-gather', 'u8', f'1,1,{padded // 2}', self.INSIDE),
        ('all-gather', 'f32', f'1,1,{padded // 64}', self.INSIDE)]))
    self.assertEqual(costs['local'].bytes_per_learner,
                     -(-n // 2) + 4 * -(-n // 64) + 4 * stats)


class ConfigTest(parameterized.TestCase):

  @parameterized.parameters(
      (dict(compress=('int8',)), r'has 1 entries but the hierarchy has 2'),
      (dict(compress=('int8', 'fp4')), r'must be a tuple of'),
      (dict(error_feedback=(True, False)), r'level 0 whose hier.compress is'),
      (dict(compress=('none', 'int8'), error_feedback=(False,)),
       r'hier.error_feedback=\(False,\) has 1 entries'),
      (dict(algorithm='asgd', compress=('none', 'int8')),
       'leave hier.levels and hier.compress empty'),
  )
  def test_bad_settings_are_one_line_errors(self, hier, message):
    configs.assert_refused(self, message, **hier)

  def test_three_levels_take_three_entries(self):
    config = configs.tiny_config(1)
    config.hier.update(levels=((2, 2), (4, 4), (8, 8)),
                       compress=('none', 'bfloat16', 'int8'),
                       error_feedback=(False, False, True))
    config_keys.validate(config)


if __name__ == '__main__':
  absltest.main()
