"""The alpha-beta cost model: formulas, event counts, special cases."""

import math
import os
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized
import jax.numpy as jnp

from hier_avg.core import averaging
from hier_avg.core.hierarchy import Hierarchy
from hier_avg.tools import cost_model as cm
from hier_avg.errors import UserError
from hier_avg.core.schedule import hier_schedule

LINK = cm.Link(latency_s=1e-6, bytes_per_s=1e9)
# Latencies and bandwidths far apart, so a swapped link shows in the result.
CLUSTER = cm.Cluster(intra=cm.Link(2e-6, 100e9), inter=cm.Link(20e-6, 10e9),
                     devices_per_node=4)
MODEL_BYTES = 4e6
STEP_S = 0.01
# Three tiers: nodes of 4 devices, pods of 2 nodes, any number of pods; the
# pod link is slower again, so a tier mix-up shows.
POD_LINK = cm.Link(100e-6, 1e9)
CLUSTER3 = cm.TieredCluster((cm.Tier(4, CLUSTER.intra, 'node'),
                             cm.Tier(2, CLUSTER.inter, 'pod'),
                             cm.Tier(None, POD_LINK)))
# (P, levels, sync warmup, steps): three-level schedules, innermost first.
LEVELS_CASES = (
    (16, ((4, 2), (8, 6), (16, 24)), 0, 100),
    (16, ((2, 1), (8, 4), (16, 8)), 0, 37),
    (24, ((4, 3), (8, 6), (24, 12)), 5, 61),
    (32, ((1, 2), (8, 4), (32, 16)), 3, 2),
    (64, ((4, 4), (8, 16), (64, 64)), 0, 1000),
)

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


class TierTest(parameterized.TestCase):

  @parameterized.parameters(1, 2, 4, 8, 12, 16, 64, 1024)
  def test_two_tiers_are_the_node_cluster(self, n):
    tiered = cm.TieredCluster((cm.Tier(4, CLUSTER.intra),
                               cm.Tier(None, CLUSTER.inter)))
    self.assertEqual(CLUSTER.tiers, (cm.Tier(4, CLUSTER.intra, 'node'),
                                     cm.Tier(None, CLUSTER.inter, 'cluster')))
    self.assertEqual(cm.allreduce_s(tiered, n, MODEL_BYTES),
                     cm.allreduce_s(CLUSTER, n, MODEL_BYTES))
    if n % 4 == 0:
      self.assertEqual(cm.predict(tiered, cm.hier(4, 2, 3), n, 50,
                                  MODEL_BYTES, STEP_S),
                       predict(cm.hier(4, 2, 3), n, steps=50))

  @parameterized.parameters(
      (1, (1, 1, 1)), (3, (3, 1, 1)), (4, (4, 1, 1)), (8, (4, 2, 1)),
      (16, (4, 2, 2)), (24, (4, 2, 3)), (64, (4, 2, 8)))
  def test_span_packs_innermost_first(self, n, expected):
    self.assertEqual(cm.span(CLUSTER3, n), expected)

  def test_three_tier_allreduce_by_hand(self):
    # 16 learners = 2 pods of 2 nodes of 4: one ring of the full 4 MB per
    # tier. NVLink: 2*3*2us + 2*(3/4)*4MB/100GB/s; between the 2 nodes of a
    # pod: 2*1*20us + 2*(1/2)*4MB/10GB/s; between the 2 pods: 2*1*100us +
    # 2*(1/2)*4MB/1GB/s.
    expected = (12e-6 + 6e-5) + (40e-6 + 4e-4) + (200e-6 + 4e-3)
    self.assertAlmostEqual(cm.allreduce_s(CLUSTER3, 16, MODEL_BYTES),
                           expected, delta=1e-12)
    # 24 = 3 pods: the pod ring has 3: 2*2*100us + 2*(2/3)*4MB/1GB/s.
    expected = (12e-6 + 6e-5) + (40e-6 + 4e-4) + (400e-6 + 16e-3 / 3)
    self.assertAlmostEqual(cm.allreduce_s(CLUSTER3, 24, MODEL_BYTES),
                           expected, delta=1e-12)
    # 8 = one pod: the pod link is not used.
    self.assertAlmostEqual(cm.allreduce_s(CLUSTER3, 8, MODEL_BYTES),
                           (12e-6 + 6e-5) + (40e-6 + 4e-4), delta=1e-12)

  def test_bounded_outermost_tier_caps_the_learners(self):
    bounded = cm.TieredCluster(CLUSTER3.tiers[:2] + (cm.Tier(3, POD_LINK),))
    self.assertEqual(cm.span(bounded, 24), (4, 2, 3))
    self.assertEqual(cm.allreduce_s(bounded, 24, MODEL_BYTES),
                     cm.allreduce_s(CLUSTER3, 24, MODEL_BYTES))
    with self.assertRaisesRegex(UserError, 'do not fit the cluster'):
      cm.span(bounded, 48)


class LevelsTest(parameterized.TestCase):

  def test_the_usual_algorithms_as_levels(self):
    self.assertEqual(cm.sync().levels, ((None, 1),))
    self.assertEqual(cm.kavg(8).levels, ((None, 8),))
    self.assertEqual(cm.hier(4, 2, 3).levels, ((4, 2), (None, 6)))
    self.assertEqual(cm.hier(4, 2, 3).group_sizes(32), (4, 32))
    self.assertEqual(cm.levels('', ((4, 2), (32, 6), (None, 12))).label,
                     'levels (4, 2), (32, 6), (P, 12)')

  @parameterized.parameters(*LEVELS_CASES)
  def test_events_match_the_engine(self, p, pairs, warmup, steps):
    r = cm.predict(CLUSTER3, cm.levels('', pairs, warmup), p, steps,
                   MODEL_BYTES, STEP_S)
    sizes, periods = zip(*pairs)
    schedule = Hierarchy(p, sizes, periods, warmup).schedule()
    self.assertEqual(r.events, schedule.counts(steps))
    self.assertEqual([l.name for l in r.levels], ['local', 'level1',
                                                  'global'])
    # And step by step, as the engine's rounds average.
    by_step = {name: 0 for name in r.events}
    for step in range(1, steps + 1):
      level = schedule.level_after(step)
      if level:
        by_step[level.name] += 1
    self.assertEqual(r.events, by_step)
    self.assertEqual(r.local_events, r.events['local'])
    self.assertEqual(r.global_events, r.events['global'])

  @parameterized.parameters(*LEVELS_CASES)
  def test_bytes_and_seconds_per_level(self, p, pairs, warmup, steps):
    r = cm.predict(CLUSTER3, cm.levels('', pairs, warmup), p, steps,
                   MODEL_BYTES, STEP_S)
    for level, (size, period) in zip(r.levels, pairs):
      self.assertEqual((level.group_size, level.period), (size, period))
      self.assertEqual(level.bytes_per_learner,
                       level.events * MODEL_BYTES if size > 1 else 0)
      self.assertAlmostEqual(
          level.comm_s,
          level.events * cm.allreduce_s(CLUSTER3, size, MODEL_BYTES))
    self.assertAlmostEqual(r.comm_s, sum(l.comm_s for l in r.levels))
    self.assertEqual(r.bytes_per_learner,
                     sum(l.bytes_per_learner for l in r.levels))

  def test_groups_of_one_send_nothing(self):
    r = cm.predict(CLUSTER3, cm.levels('', ((1, 2), (4, 4), (None, 8))), 16,
                   64, MODEL_BYTES, STEP_S)
    self.assertEqual(r.events, {'local': 16, 'level1': 8, 'global': 8})
    self.assertEqual((r.levels[0].bytes_per_learner, r.levels[0].comm_s),
                     (0.0, 0.0))
    self.assertGreater(r.levels[1].bytes_per_learner, 0)
    alone = cm.predict(CLUSTER3, cm.kavg(2), 1, 64, MODEL_BYTES, STEP_S)
    self.assertEqual((alone.bytes_per_learner, alone.comm_s), (0.0, 0.0))

  def test_two_levels_are_hier(self):
    self.assertEqual(
        cm.predict(CLUSTER3, cm.levels('x', ((4, 2), (32, 6))), 32, 100,
                   MODEL_BYTES, STEP_S),
        cm.predict(CLUSTER3, cm.hier(4, 2, 3), 32, 100, MODEL_BYTES, STEP_S))

  @parameterized.parameters(*LEVELS_CASES)
  def test_elapsed_from_counters_is_the_prediction(self, p, pairs, warmup,
                                                   steps):
    r = cm.predict(CLUSTER3, cm.levels('', pairs, warmup), p, steps,
                   MODEL_BYTES, STEP_S)
    counters = [(l.group_size, l.events) for l in r.levels]
    self.assertAlmostEqual(
        cm.elapsed_s(CLUSTER3, steps, STEP_S, counters, MODEL_BYTES),
        r.total_s)

  def test_compressed_levels_reduce_inside_then_exchange_payloads(self):
    plain = cm.predict(CLUSTER3, cm.levels('', ((4, 2), (None, 8))), 64, 96,
                       MODEL_BYTES, STEP_S)
    int8 = cm.predict(CLUSTER3, cm.levels('', ((4, 2), (None, 8)),
                                          compress=('none', 'int8')), 64, 96,
                      MODEL_BYTES, STEP_S)
    self.assertEqual(plain.levels[0], int8.levels[0])
    payload = MODEL_BYTES / 4 + 4 * math.ceil(MODEL_BYTES / 4 / 256)
    global_ = int8.levels[1]
    # A learner: its float32 model inside its group of 4, a quarter of the
    # group's one payload between groups.
    self.assertEqual(global_.bytes_per_learner,
                     global_.events * (MODEL_BYTES + payload / 4))
    self.assertAlmostEqual(global_.comm_s, global_.events *
                           cm.compressed_allreduce_s(CLUSTER3, 64, 4,
                                                     MODEL_BYTES, payload))
    self.assertLess(global_.comm_s, plain.levels[1].comm_s)
    # Between nodes a node moves one payload whatever its learners: with
    # 1 or 4 learners per node int8 is about 4x faster than float32 over
    # a slow network (the float32 reduction inside rides a fast link).
    for per_node in (1, 4):
      cluster = cm.Cluster(CLUSTER.intra, cm.Link(0.0, 1e9), per_node)
      pairs = ((per_node, 2), (None, 8))
      fp32, int8_ = [
          cm.predict(cluster, cm.levels('', pairs, compress=kinds),
                     2 * per_node, 8, MODEL_BYTES, STEP_S).levels[1].comm_s
          for kinds in (('none', 'none'), ('none', 'int8'))]
      self.assertAlmostEqual(fp32 / int8_, 4, delta=0.3)

  def test_compressed_allreduce_by_hand(self):
    # 8 learners: 4 per node (intra ring of 4), 2 nodes (inter ring of 2).
    cluster = cm.Cluster(cm.Link(1e-6, 1e9), cm.Link(1e-3, 1e6), 4)
    model, payload = 4000.0, 1000.0
    ring = lambda alpha, beta, m, x: 2 * (m - 1) * (alpha + x / m / beta)
    # Groups of 4 reduce float32 inside the node, payloads cross it.
    self.assertAlmostEqual(
        cm.compressed_allreduce_s(cluster, 8, 4, model, payload),
        ring(1e-6, 1e9, 4, model) + ring(1e-3, 1e6, 2, payload))
    # Groups of one (the innermost level): payloads on every tier.
    self.assertAlmostEqual(
        cm.compressed_allreduce_s(cluster, 8, 1, model, payload),
        ring(1e-6, 1e9, 4, payload) + ring(1e-3, 1e6, 2, payload))
    self.assertEqual(cm.compressed_allreduce_s(cluster, 1, 1, model,
                                               payload), 0.0)
    with self.assertRaisesRegex(UserError, 'has 1 entries but the hierarchy '
                                'has 2'):
      cm.levels('', ((4, 2), (None, 8)), compress=('int8',))

  def test_delay_hides_up_to_tau_steps_of_compute_per_event(self):
    pairs, step_s = ((4, 2), (None, 8)), 2e-4
    plain = cm.predict(CLUSTER, cm.levels('', pairs), 16, 64, MODEL_BYTES,
                       step_s)
    event_s = cm.allreduce_s(CLUSTER, 16, MODEL_BYTES)
    self.assertGreater(event_s, step_s)  # One step hides part of it.
    for tau in (0, 1):
      late = cm.predict(CLUSTER, cm.levels('', pairs, delay=(0, tau)), 16,
                        64, MODEL_BYTES, step_s)
      global_ = late.level('global')
      self.assertEqual(global_.comm_s, plain.level('global').comm_s)
      self.assertAlmostEqual(global_.hidden_s,
                             global_.events * min(event_s, tau * step_s))
      self.assertAlmostEqual(late.total_s, plain.total_s - global_.hidden_s)
    # A short event is hidden entirely; the warmup's are never late.
    fast = cm.Cluster(CLUSTER.intra, cm.Link(1e-6, 1e12), 4)
    hidden = cm.predict(fast, cm.levels('', pairs, sync_warmup=3,
                                        delay=(0, 1)), 16, 67, MODEL_BYTES,
                        step_s).level('global')
    self.assertEqual(hidden.events, 3 + 8)
    self.assertAlmostEqual(hidden.exposed_s, 3 * cm.allreduce_s(
        fast, 16, MODEL_BYTES))
    self.assertFalse(cm.hides(hidden))
    self.assertTrue(cm.hides(cm.predict(
        fast, cm.levels('', pairs, delay=(0, 1)), 16, 64, MODEL_BYTES,
        step_s).level('global')))

  def test_fragments_cut_the_peak_not_the_bytes(self):
    pairs = ((4, 2), (None, 8))
    plain = cm.predict(CLUSTER, cm.levels('', pairs), 16, 64, MODEL_BYTES,
                       STEP_S)
    streamed = cm.predict(CLUSTER, cm.levels('', pairs, fragments=(1, 4)),
                          16, 64, MODEL_BYTES, STEP_S)
    p_global, s_global = plain.level('global'), streamed.level('global')
    self.assertEqual(s_global.events, 4 * p_global.events)
    self.assertEqual(s_global.event_bytes, MODEL_BYTES / 4)
    self.assertEqual(s_global.bytes_per_learner, p_global.bytes_per_learner)
    self.assertAlmostEqual(s_global.comm_s, 4 * p_global.events *
                           cm.allreduce_s(CLUSTER, 16, MODEL_BYTES / 4))
    # The local level averages at the global steps too (it is replaced
    # only by a whole-model averaging).
    self.assertEqual(streamed.level('local').events,
                     plain.level('local').events + p_global.events)
    with self.assertRaisesRegex(UserError, 'too few for 9 fragments'):
      cm.levels('', pairs, fragments=(1, 9))

  def test_step_table_by_hand(self):
    pairs = ((4, 2), (None, 8))
    table = cm.step_table(CLUSTER, 16, [
        cm.sync(), cm.levels('late', pairs, delay=(0, 1),
                             fragments=(1, 2))], MODEL_BYTES, STEP_S, 8)
    lines = table.split('\n')
    self.assertLen(lines, 4)
    sync_ms = 1e3 * cm.allreduce_s(CLUSTER, 16, MODEL_BYTES)
    self.assertEqual(lines[2], f'| sync SGD | 4 | {sync_ms:.3g} | '
                     f'{sync_ms:.3g} | {10 + sync_ms:.4g} | 1.00 | no |')
    self.assertTrue(lines[3].startswith('| late | 4 / 2 | '))
    self.assertTrue(lines[3].endswith('| no / fully |'))

  def test_streaming_command_prints_its_tables(self):
    script = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                          'benchmarks', 'streaming_table.py')
    out = subprocess.run([sys.executable, script, '--inter_gbps=10'],
                         capture_output=True, text=True, timeout=120,
                         check=True).stdout
    self.assertIn('32 nodes x 8 GPUs, 10 Gb/s between nodes', out)
    self.assertIn('| F=1: smallest tau hiding it, 2 |', out)
    self.assertIn('| F=2: smallest tau hiding it, 1 |', out)

  def test_warmup_averages_globally(self):
    r = cm.predict(CLUSTER3, cm.levels('', ((4, 4), (None, 8)), 5), 16, 13,
                   MODEL_BYTES, STEP_S)
    # Steps 1-5 global; then local after 9, global after 13.
    self.assertEqual(r.events, {'local': 1, 'global': 6})

  def test_pods_averaging_less_often_saves_time(self):
    # Pod-level averaging over the pod link instead of every global one.
    two = cm.predict(CLUSTER3, cm.hier(4, 2, 2), 64, 96, MODEL_BYTES, STEP_S)
    three = cm.predict(CLUSTER3, cm.levels('', ((4, 2), (8, 4), (None, 16))),
                       64, 96, MODEL_BYTES, STEP_S)
    self.assertEqual(two.local_events, three.local_events)
    self.assertLess(three.comm_s, two.comm_s)
    self.assertGreater(three.speedup_vs_sync, two.speedup_vs_sync)


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
      ('zero_fan_out', lambda: cm.Tier(0, LINK)),
      ('fan_out_not_an_int', lambda: cm.Tier(2.5, LINK)),
      ('tier_without_a_link', lambda: cm.Tier(4, None)),
      ('no_tiers', lambda: cm.TieredCluster(())),
      ('not_a_tier', lambda: cm.TieredCluster(((4, LINK),))),
      ('unbounded_inner_tier',
       lambda: cm.TieredCluster((cm.Tier(None, LINK), cm.Tier(4, LINK)))),
      ('learners_exceed_the_cluster', lambda: cm.allreduce_s(
          cm.TieredCluster((cm.Tier(4, LINK), cm.Tier(2, LINK))), 16, 1)),
      ('partial_pods', lambda: cm.allreduce_s(CLUSTER3, 12, 1)),
      ('no_levels', lambda: cm.levels('x', ())),
      ('level_not_a_pair', lambda: cm.levels('x', ((4, 2, 1),))),
      ('zero_period', lambda: cm.levels('x', ((4, 0), (None, 4)))),
      ('zero_group', lambda: cm.levels('x', ((0, 2), (None, 4)))),
      ('inner_group_of_everybody', lambda: cm.levels('x', ((None, 2),
                                                          (None, 4)))),
      ('groups_do_not_nest', lambda: cm.levels('x', ((4, 2), (6, 4),
                                                     (None, 8)))),
      ('periods_do_not_nest', lambda: cm.levels('x', ((4, 2), (8, 6),
                                                      (None, 8)))),
      ('negative_warmup', lambda: cm.levels('x', ((None, 2),), -1)),
      ('outer_group_is_not_p', lambda: cm.predict(
          CLUSTER3, cm.levels('x', ((4, 2), (16, 4))), 32, 10, 1, 1)),
      ('middle_group_does_not_divide_p', lambda: cm.predict(
          CLUSTER3, cm.levels('x', ((4, 2), (16, 4), (None, 8))), 24, 10, 1,
          1)),
      ('group_straddles_pods', lambda: cm.predict(
          CLUSTER3, cm.levels('x', ((4, 2), (12, 4), (None, 8))), 48, 10, 1,
          1)),
  )
  def test_bad_input_is_a_one_line_user_error(self, make):
    with self.assertRaises(UserError) as e:
      make()
    self.assertNotIn('\n', str(e.exception))


class TableTest(absltest.TestCase):

  def test_command_prints_a_row_per_learner_count_and_algorithm(self):
    script = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                          'benchmarks', 'cost_table.py')
    run = lambda *flags: subprocess.run(
        [sys.executable, script, '--learners=8,128', '--k1=2', '--k2=8',
         *flags], capture_output=True, text=True, timeout=120,
        check=True).stdout.strip().split('\n')
    # Two tiers: four rows per P.
    lines = run('--nodes_per_pod=0')
    self.assertStartsWith(lines[0], '| P | nodes | steps/epoch | algorithm |')
    self.assertLen(lines, 2 + 2 * 4)
    self.assertStartsWith(lines[2], '| 8 | 2 | 48.83 | sync SGD | 48.83 |')
    # 610 steps in 200 epochs: 305 - 38 local and 38 global averagings.
    self.assertIn('| 128 | 32 | 3.05 | Hier-AVG S=4 K1=2 K2=8 | 1.33 / 0.19 |',
                  lines[-1])
    self.assertTrue(all(line.count('|') == 11 for line in lines))
    # Three tiers (the default: pods of 8 nodes): P = 8 fits in one pod, so
    # only P = 128 (4 pods) gets the three-level row.
    # K3 = 2: of the 610 steps, 267 end with a local averaging, 38 - 19 with
    # a pod one and 19 with a global one.
    lines = run('--k3=2')
    self.assertStartsWith(lines[0],
                          '| P | nodes | pods | steps/epoch | algorithm |')
    self.assertLen(lines, 2 + 4 + 5)
    self.assertStartsWith(lines[2], '| 8 | 2 | 1 | 48.83 | sync SGD |')
    self.assertStartsWith(
        lines[-1], '| 128 | 32 | 4 | 3.05 | Hier-AVG levels (4, 2), '
        '(32, 16), (P, 32) | 1.33 / 0.10 / 0.10 |')
    self.assertTrue(all(line.count('|') == 12 for line in lines))

  def test_fractional_epochs_average_over_the_run(self):
    # 50,000 / (1024 * 128) = 0.38 steps per epoch: 38 steps in 100 epochs.
    table = cm.epoch_table(CLUSTER, [1024], [cm.kavg(2)], MODEL_BYTES, STEP_S,
                           50_000, 128, 100)
    self.assertIn('| 1024 | 256 | 0.38 | K-AVG K=2 | 0.19 |', table)

  def test_a_function_of_p_gives_rows_where_it_fits(self):
    def pods(p):
      return cm.levels('pods', ((4, 2), (8, 4), (None, 8))) if p > 8 else None
    table = cm.epoch_table(CLUSTER3, [8, 16], [cm.sync(), pods], MODEL_BYTES,
                           STEP_S, 50_000, 128, 10)
    lines = table.split('\n')
    self.assertLen(lines, 2 + 1 + 2)
    self.assertStartsWith(lines[0], '| P | nodes | pods | steps/epoch |')
    self.assertStartsWith(lines[-1], '| 16 | 4 | 2 | 24.40 | pods | 6.10 / '
                          '3.10 / 3.00 |')


if __name__ == '__main__':
  absltest.main()
