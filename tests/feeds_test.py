"""What a feed gathers per round stays under a byte cap; evaluation batches
stay within the test set."""

import tempfile
import types
from unittest import mock

from absl.testing import absltest
import ml_collections

from hier_avg import train
from hier_avg.core.schedule import hier_schedule
from hier_avg.data import datasets, feeds
from hier_avg.runtime import evaluation
from hier_avg.runtime.engine import Engine
from tests.support import configs


class ResidentRoundBytesTest(absltest.TestCase):

  def test_cifar_sized_rounds_are_cut_to_a_gigabyte_per_device(self):
    data = datasets.synthetic(16 * 128, 4, 32, 10, seed=0)
    data_config = ml_collections.ConfigDict(dict(
        batch_size=128, sampling='partition'))
    feed = feeds.ResidentFeed(data, data_config, num_learners=16, seed=0)
    feed._engine = types.SimpleNamespace(
        topology=types.SimpleNamespace(learners_per_device=8))
    # A step gathers 8 learners x 128 images x 3,072 bytes = 3.1 MB.
    self.assertEqual(feed.max_round_length, 341)
    # With K1 = 2000 a scanned round would have gathered 6.3 GB; the cap
    # becomes the largest divisor of K1 under it.
    self.assertEqual(hier_schedule(2000, 4).fit_cap(feed.max_round_length),
                     250)

  def test_a_run_never_gathers_a_round_over_the_cap(self):
    config = configs.tiny_config(16)
    config.hier.update(k1=8, k2=2)
    config.train.log_every = 8
    config.runtime.step_loop = 'scan'
    step_bytes = 8 * 32 * 32 * 3  # One learner per device, B = 8.
    with mock.patch.object(feeds, 'MAX_ROUND_BYTES', 3 * step_bytes), \
        mock.patch.object(Engine, 'train_round', autospec=True,
                          side_effect=Engine.train_round) as train_round:
      train.train_and_evaluate(config, tempfile.mkdtemp())
    # The cap of 3 steps fits K1 = 8 as rounds of 2 (of 8 uncapped).
    lengths = {call.args[2] for call in train_round.call_args_list}
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
