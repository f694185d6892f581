"""Where a data set in memory is placed (on every device or on the host),
what a round gathers (under a byte cap), and evaluation batches (within the
test set)."""

import tempfile
import types
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from hier_avg import config_keys, train
from hier_avg.core.schedule import hier_schedule
from hier_avg.data import datasets, feeds
from hier_avg.runtime import evaluation, memory
from hier_avg.runtime.engine import Engine
from tests.support import devices, engines, outputs, trees
from tests.support.configs import tiny_config


def setUpModule():
  devices.set_up_devices()


def data_config(**overrides):
  """The `data` block at its registered defaults, with a tiny batch."""
  c = config_keys.defaults().data
  c.update(dict(batch_size=4), **overrides)
  return c


def started_feed(**overrides):
  """A ResidentFeed of tiny data, started on a 16-learner engine."""
  data = engines.tiny_data()
  engine = engines.make_engine(engines.make_learner(data=data), 16, 4, 2, 2)
  feed = feeds.ResidentFeed(data, data_config(**overrides), 16, seed=0)
  feed.start(engine, 0)
  return feed


class GatherTest(absltest.TestCase):

  def test_host_gather_is_the_device_gather(self):
    # 16 learners on 8 devices: blocks of 2 learners per device.
    feed = started_feed(placement='host')
    topology, sampler, data = (feed._engine.topology, feed._sampler,
                               feed.data)
    indices = np.asarray(topology.put_round_indices(sampler, 3, 5))
    images, labels = topology.put_round_gathered(
        sampler, 3, 5, data.train_images, data.train_labels)
    self.assertEqual(images.sharding, topology.round_sharding())
    np.testing.assert_array_equal(images, data.train_images[indices])
    np.testing.assert_array_equal(labels, data.train_labels[indices])


class ChoiceTest(parameterized.TestCase):

  @parameterized.parameters(
      ('auto', 100, 100, 'device'), ('auto', 101, 100, 'host'),
      ('device', 101, 100, 'device'), ('host', 1, 100, 'host'))
  def test_choose_placement(self, placement, data_bytes, budget, want):
    self.assertEqual(feeds.choose_placement(placement, data_bytes, budget),
                     want)

  def test_cpu_devices_share_the_host_memory(self):
    self.assertEqual(memory.device_memory_bytes(jax.devices()[:4]),
                     memory.physical_memory_bytes() // 4)

  def test_auto_keeps_a_small_set_on_the_devices(self):
    with self.assertLogs('absl', 'INFO') as logs:
      feed = started_feed()
    self.assertEqual(feed.placement, 'device')
    self.assertFalse(feed.streamed)
    # Capped per device: 2 learners x 4 images of 8 x 8 x 3 bytes a step.
    self.assertEqual(feed.max_round_length,
                     feeds.steps_within_round_bytes(2 * 4 * 192))
    self.assertLen([l for l in logs.output if 'placement device' in l], 1)

  def test_auto_over_the_budget_keeps_the_set_on_the_host(self):
    with self.assertLogs('absl', 'INFO') as logs:
      feed = started_feed(device_memory_fraction=1e-9)
    self.assertEqual(feed.placement, 'host')
    self.assertTrue(feed.streamed)
    self.assertGreater(feed.max_round_length, 0)
    self.assertIsNone(feed._images)  # Nothing replicated on the devices.
    line, = [l for l in logs.output if 'placement host' in l]
    self.assertIn('training set 0.1 MiB per device if replicated, budget '
                  '0.0 MiB per device', line)


class PlacementRunTest(absltest.TestCase):

  def test_host_and_device_placement_train_alike(self):
    results = {}
    for placement in ('device', 'host'):
      config = tiny_config(8)
      config.data.placement = placement
      config.data.augment = True  # On device, with each learner's key.
      config.train.eval_every = 4
      workdir = tempfile.mkdtemp()
      train.train_and_evaluate(config, workdir)
      results[placement] = outputs.rows_and_model(workdir)
    (device_rows, device_model), (host_rows, host_model) = (
        results['device'], results['host'])
    # Other programs (one gathers minibatches by index, one is given
    # them): equal to float32 rounding, and an accuracy over 64 test
    # examples within one of them.
    outputs.assert_rows_close(host_rows, device_rows, accuracy_atol=1 / 64)
    self.assertIn('test_accuracy', host_rows[-1])
    trees.assert_trees_close(host_model, device_model, atol=1e-6, rtol=1e-6)


class ResidentRoundBytesTest(absltest.TestCase):

  def test_cifar_sized_rounds_are_cut_to_a_gigabyte_per_device(self):
    data = datasets.synthetic(16 * 128, 4, 32, 10, seed=0)
    feed = feeds.ResidentFeed(data, data_config(batch_size=128),
                              num_learners=16, seed=0)
    feed._engine = types.SimpleNamespace(
        topology=types.SimpleNamespace(learners_per_device=8))
    # A step gathers 8 learners x 128 images x 3,072 bytes = 3.1 MB.
    self.assertEqual(feed.max_round_length, 341)
    # With K1 = 2000 a scanned round would have gathered 6.3 GB; the cap
    # becomes the largest divisor of K1 under it.
    self.assertEqual(hier_schedule(2000, 4).fit_cap(feed.max_round_length),
                     250)

  def test_a_run_never_gathers_a_round_over_the_cap(self):
    config = tiny_config(16)
    config.hier.update(k1=8, k2=2)
    config.train.log_every = 8
    config.runtime.step_loop = 'scan'
    step_bytes = 8 * 32 * 32 * 3  # One learner per device, B = 8.
    with mock.patch.object(feeds, 'MAX_ROUND_BYTES', 3 * step_bytes), \
        mock.patch.object(Engine, 'round_program', autospec=True,
                          side_effect=Engine.round_program) as program:
      train.train_and_evaluate(config, tempfile.mkdtemp())
    # The cap of 3 steps fits K1 = 8 as rounds of 2 (of 8 uncapped).
    lengths = {call.args[1].length for call in program.call_args_list}
    self.assertEqual(lengths, {2})


class EvalBatchTest(absltest.TestCase):

  def test_an_eval_batch_is_at_most_the_test_set_split_evenly(self):
    engine = types.SimpleNamespace(
        topology=types.SimpleNamespace(num_devices=8))
    # The default 1,000 on a 64-image test set would pad 936 images.
    self.assertEqual(evaluation.global_eval_batch(engine, 1000, 64), 64)
    self.assertEqual(evaluation.global_eval_batch(engine, 1000, 60), 64)
    self.assertEqual(evaluation.global_eval_batch(engine, 10, 1000), 16)
    self.assertEqual(evaluation.global_eval_batch(engine, 1000, 10000), 1000)


if __name__ == '__main__':
  absltest.main()
