"""The alpha-beta cost model: formulas, event counts, special cases."""

import os
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized
import jax.numpy as jnp

from hier_avg.core import averaging
from hier_avg.tools import cost_model as cm
from hier_avg.errors import UserError
from hier_avg.core.schedule import hier_schedule

LINK = cm.Link(latency_s=1e-6, bytes_per_s=1e9)
# Latencies and bandwidths far apart, so a swapped link shows in the result.
CLUSTER = cm.Cluster(intra=cm.Link(2e-6, 100e9), inter=cm.Link(20e-6, 10e9),
                     devices_per_node=4)
MODEL_BYTES = 4e6
STEP_S = 0.01

# (n, bytes, ring all-reduce seconds over LINK, worked by hand)
RING_CASES = (
    (2, 1e6, 2e-6 + 1e-3),        # 2*1*alpha + 2*(1/2)*M/beta
    (4, 1e6, 6e-6 + 1.5e-3),      # 2*3*alpha + 2*(3/4)*M/beta
    (8, 8e6, 14e-6 + 14e-3),      # 2*7*alpha + 2*(7/8)*M/beta
    (4, 0, 6e-6),                 # Latency only.
)
# (P, S, K1, K2, steps): layouts and schedules for the event and bound tests.
HIER_CASES = (
    (8, 4, 4, 4, 100),
    (16, 2, 2, 8, 37),
    (32, 8, 3, 2, 60),            # S spans two nodes.
    (128, 4, 4, 4, 1000),         # The papers' 32 nodes x 4 GPUs.
    (1024, 4, 1, 16, 64),
)


def small_tree():
  """One learner's state with float32, bfloat16 and integer leaves."""
  return {'dense': {'kernel': jnp.zeros((3, 5), jnp.float32),
                    'bias': jnp.zeros((5,), jnp.float32)},
          'scale': jnp.zeros((7,), jnp.bfloat16),
          'count': jnp.zeros((), jnp.int32)}


def predict(algorithm, p, steps=100):
  return cm.predict(CLUSTER, algorithm, p, steps, MODEL_BYTES, STEP_S)


class RingTest(parameterized.TestCase):

  @parameterized.parameters(*RING_CASES)
  def test_ring_by_hand(self, n, nbytes, expected):
    self.assertAlmostEqual(cm.ring_allreduce_s(LINK, n, nbytes), expected,
                           delta=1e-12)

  def test_one_participant_costs_nothing(self):
    self.assertEqual(cm.ring_allreduce_s(LINK, 1, 1e9), 0.0)
    self.assertEqual(cm.allreduce_s(CLUSTER, 1, 1e9), 0.0)
    r = predict(cm.sync(), 1)
    self.assertEqual((r.comm_s, r.global_bytes_per_learner), (0.0, 0.0))

  def test_inside_one_node_uses_the_intra_link_only(self):
    self.assertEqual(cm.allreduce_s(CLUSTER, 4, MODEL_BYTES),
                     cm.ring_allreduce_s(CLUSTER.intra, 4, MODEL_BYTES))

  def test_across_nodes_is_intra_ring_plus_inter_ring(self):
    # 8 learners = 2 nodes of 4: 2*3*2us + 1.5*4MB/100GB/s on NVLink, then
    # 2*1*20us + 1*4MB/10GB/s between the nodes.
    expected = (12e-6 + 6e-5) + (40e-6 + 4e-4)
    self.assertAlmostEqual(cm.allreduce_s(CLUSTER, 8, MODEL_BYTES), expected,
                           delta=1e-12)

  def test_one_device_per_node_is_a_flat_inter_ring(self):
    flat = cm.Cluster(CLUSTER.intra, CLUSTER.inter, devices_per_node=1)
    self.assertEqual(cm.allreduce_s(flat, 16, MODEL_BYTES),
                     cm.ring_allreduce_s(CLUSTER.inter, 16, MODEL_BYTES))


class PredictTest(parameterized.TestCase):

  @parameterized.parameters(*HIER_CASES)
  def test_events_match_the_schedule(self, p, s, k1, k2, steps):
    r = predict(cm.hier(s, k1, k2), p, steps)
    self.assertEqual({'local': r.local_events, 'global': r.global_events},
                     hier_schedule(k1, k2).counts(steps))

  @parameterized.parameters(*HIER_CASES)
  def test_bytes_are_events_times_averaged_state(self, p, s, k1, k2, steps):
    nbytes = averaging.bytes_per_learner(small_tree())
    self.assertEqual(nbytes, (15 + 5) * 4 + 7 * 2)
    r = cm.predict(CLUSTER, cm.hier(s, k1, k2), p, steps, nbytes, STEP_S)
    self.assertEqual(r.local_bytes_per_learner, r.local_events * nbytes)
    self.assertEqual(r.global_bytes_per_learner, r.global_events * nbytes)

  def test_times_add_up(self):
    r = predict(cm.hier(4, 2, 3), 32, steps=50)
    self.assertEqual(r.compute_s, 50 * STEP_S)
    self.assertAlmostEqual(
        r.local_comm_s, r.local_events * cm.allreduce_s(CLUSTER, 4,
                                                        MODEL_BYTES))
    self.assertAlmostEqual(
        r.global_comm_s, r.global_events * cm.allreduce_s(CLUSTER, 32,
                                                          MODEL_BYTES))
    self.assertAlmostEqual(r.total_s,
                           r.local_comm_s + r.global_comm_s + r.compute_s)
    self.assertAlmostEqual(r.speedup_vs_sync,
                           predict(cm.sync(), 32, 50).total_s / r.total_s)

  @parameterized.parameters(1, 4, 8)
  def test_sync_is_hier_with_k1_k2_one(self, s):
    sync, hier = predict(cm.sync(), 32), predict(cm.hier(s, 1, 1), 32)
    self.assertEqual(sync.global_events, 100)
    self.assertEqual(sync.speedup_vs_sync, 1.0)
    self.assertEqual(
        (hier.local_bytes_per_learner, hier.global_bytes_per_learner),
        (sync.local_bytes_per_learner, sync.global_bytes_per_learner))
    self.assertEqual(hier.comm_s, sync.comm_s)

  @parameterized.parameters(*HIER_CASES)
  def test_kavg_is_hier_with_one_learner_per_group(self, p, _, k1, k2, steps):
    kavg, hier = (predict(cm.kavg(k1 * k2), p, steps),
                  predict(cm.hier(1, k1, k2), p, steps))
    self.assertEqual(hier.global_events, kavg.global_events)
    self.assertEqual(hier.local_bytes_per_learner, 0)
    self.assertEqual(hier.global_bytes_per_learner,
                     kavg.global_bytes_per_learner)
    self.assertEqual(hier.comm_s, kavg.comm_s)

  @parameterized.parameters(*HIER_CASES)
  def test_hier_with_everybody_in_the_group_is_kavg_k1(self, p, _, k1, k2,
                                                       steps):
    kavg, hier = predict(cm.kavg(k1), p, steps), predict(cm.hier(p, k1, k2),
                                                        p, steps)
    self.assertEqual(hier.local_events + hier.global_events,
                     kavg.global_events)
    self.assertEqual(
        hier.local_bytes_per_learner + hier.global_bytes_per_learner,
        kavg.global_bytes_per_learner)
    self.assertAlmostEqual(hier.comm_s, kavg.comm_s, delta=1e-12)

  @parameterized.parameters(*HIER_CASES)
  def test_hier_comm_lies_between_kavg_k1k2_and_kavg_k1(self, p, s, k1, k2,
                                                        steps):
    # Same global averagings as K-AVG(K1 K2), plus local ones that cost
    # something; as many averagings as K-AVG(K1), of which the local ones
    # are cheaper.
    hier = predict(cm.hier(s, k1, k2), p, steps)
    self.assertGreater(hier.local_events, 0)
    self.assertGreater(hier.comm_s, predict(cm.kavg(k1 * k2), p,
                                            steps).comm_s)
    self.assertLess(hier.comm_s, predict(cm.kavg(k1), p, steps).comm_s)
    self.assertGreater(hier.speedup_vs_sync, 1.0)

  @parameterized.named_parameters(
      ('group_does_not_divide_p', lambda: predict(cm.hier(3, 1, 1), 8)),
      ('group_straddles_nodes', lambda: predict(cm.hier(3, 1, 1), 12)),
      ('partial_nodes', lambda: predict(cm.sync(), 6)),
      ('zero_k1', lambda: predict(cm.hier(4, 0, 1), 8)),
      ('negative_steps', lambda: predict(cm.sync(), 8, steps=-1)),
      ('negative_latency', lambda: cm.Link(-1.0, 1e9)),
      ('zero_bandwidth', lambda: cm.Link(1e-6, 0)),
      ('no_devices', lambda: cm.Cluster(LINK, LINK, 0)),
      ('zero_epochs', lambda: cm.epoch_table(CLUSTER, [8], [cm.sync()], 1, 1,
                                             100, 1, 0)),
  )
  def test_bad_input_is_a_one_line_user_error(self, make):
    with self.assertRaises(UserError) as e:
      make()
    self.assertNotIn('\n', str(e.exception))


class TableTest(absltest.TestCase):

  def test_command_prints_a_row_per_learner_count_and_algorithm(self):
    script = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                          'benchmarks', 'cost_table.py')
    out = subprocess.run(
        [sys.executable, script, '--learners=8,128', '--k1=2', '--k2=8'],
        capture_output=True, text=True, timeout=120, check=True).stdout
    lines = out.strip().split('\n')
    self.assertStartsWith(lines[0], '| P | nodes | steps/epoch | algorithm |')
    self.assertLen(lines, 2 + 2 * 4)
    self.assertStartsWith(lines[2], '| 8 | 2 | 48.83 | sync SGD |')
    self.assertIn('| 128 | 32 | 3.05 | Hier-AVG S=4 K1=2 K2=8 |', lines[-1])
    self.assertTrue(all(line.endswith('|') for line in lines))

  def test_fractional_epochs_average_over_the_run(self):
    # 50,000 / (1024 * 128) = 0.38 steps per epoch: 38 steps in 100 epochs.
    table = cm.epoch_table(CLUSTER, [1024], [cm.kavg(2)], MODEL_BYTES, STEP_S,
                           50_000, 128, 100)
    self.assertIn('| 1024 | 256 | 0.38 | K-AVG K=2 | 0.00 | 0.19 |',
                  table)


if __name__ == '__main__':
  absltest.main()
