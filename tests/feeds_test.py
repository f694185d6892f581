"""Where a data set in memory is placed: on every device or on the host."""

import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from hier_avg import config_keys, train
from hier_avg.data import feeds
from hier_avg.run import export
from tests.support import devices, engines, outputs
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
    self.assertEqual(feeds.device_memory_bytes(jax.devices()[:4]),
                     feeds.physical_memory_bytes() // 4)

  def test_auto_keeps_a_small_set_on_the_devices(self):
    with self.assertLogs('absl', 'INFO') as logs:
      feed = started_feed()
    self.assertEqual(feed.placement, 'device')
    self.assertFalse(feed.streamed)
    self.assertEqual(feed.max_round_length, 0)
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


def _results(workdir):
  """What a run computed: its final model and its metrics rows' values."""
  rows = [{k: v for k, v in row.items() if k not in ('images_per_s', 'wall_s')}
          for row in outputs.metrics_rows(workdir)]
  return export.load_model(os.path.join(workdir, export.MODEL_FILE)), rows


class PlacementRunTest(absltest.TestCase):

  def test_host_and_device_placement_train_bit_identically(self):
    results = {}
    for placement in ('device', 'host'):
      config = tiny_config(8)
      config.data.placement = placement
      config.data.augment = True  # On device, with each learner's key.
      config.train.eval_every = 4
      workdir = tempfile.mkdtemp()
      train.train_and_evaluate(config, workdir)
      results[placement] = _results(workdir)
    (device_model, device_rows), (host_model, host_rows) = (
        results['device'], results['host'])
    self.assertEqual(host_rows, device_rows)
    self.assertIn('test_accuracy', host_rows[-1])
    jax.tree.map(np.testing.assert_array_equal, host_model, device_model)


if __name__ == '__main__':
  absltest.main()
