"""Streamed ImageNet (tfds imagenet2012) on `tfds.testing.mock_data`.

The mock serves random JPEGs of random sizes for any split. The data_dir
holds real tfds metadata (features, split sizes), written by `_mock_dir`, so
the code under test reads split sizes exactly as from a prepared ImageNet.
"""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile

from absl.testing import absltest
import jax
import numpy as np

from hier_avg import streaming
from hier_avg.errors import UserError
from tests import helpers

NUM_EXAMPLES = 40  # Per split (the mock yields this many for every split).
IMAGE_SIZE = 32


def setUpModule():
  helpers.set_up_devices()


def _tfds():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def _mock_dir(test_class) -> str:
  """A data_dir with imagenet2012's metadata and NUM_EXAMPLES per split."""
  tfds = _tfds()
  root = tempfile.mkdtemp(prefix='mock_imagenet_')
  test_class.addClassCleanup(shutil.rmtree, root, ignore_errors=True)
  builder = tfds.builder('imagenet2012', data_dir=root)
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=split, shard_lengths=[NUM_EXAMPLES],
                          num_bytes=0)
      for split in (streaming.TRAIN_SPLIT, streaming.TEST_SPLIT)]))
  os.makedirs(builder.data_dir)
  builder.info.write_to_directory(builder.data_dir)
  return root


@contextlib.contextmanager
def _mocked(root):
  tfds = _tfds()
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES, data_dir=root,
                              policy=tfds.testing.MockPolicy.USE_FILES):
    yield


def _digest(image) -> str:
  return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


class StreamTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = _mock_dir(cls)
    cls.enterClassContext(_mocked(cls.root))
    cls.data = streaming.load('imagenet2012', cls.root, IMAGE_SIZE)

  def _steps(self, first_step, count, num_learners=2, batch_size=4,
             augment=True, seed=0):
    batches = streaming.train_batches(
        self.data, num_learners, batch_size, num_learners, first_step, seed,
        augment, 0, 1)
    return [next(batches) for _ in range(count)]

  def test_reads_split_sizes_and_classes(self):
    self.assertEqual((self.data.num_train, self.data.num_test),
                     (NUM_EXAMPLES, NUM_EXAMPLES))
    self.assertEqual(self.data.num_classes, 1000)
    self.assertEqual(self.data.image_shape, (IMAGE_SIZE, IMAGE_SIZE, 3))
    # (40 // 2 learners) // 4 per batch.
    self.assertEqual(streaming.steps_per_epoch(self.data, 2, 4), 5)

  def test_batches_are_learner_rows_of_uint8_images(self):
    images, labels = self._steps(0, 1)[0]
    self.assertEqual(images.shape, (2, 4, IMAGE_SIZE, IMAGE_SIZE, 3))
    self.assertEqual(images.dtype, np.uint8)
    self.assertEqual(labels.shape, (2, 4))
    self.assertEqual(labels.dtype, np.int32)
    self.assertTrue(((labels >= 0) & (labels < 1000)).all())

  def test_resuming_mid_stream_gives_the_same_batches(self):
    # Steps 7..11 cross into the third epoch (5 steps per epoch).
    whole = self._steps(0, 12)
    resumed = self._steps(7, 5)
    for (x, y), (rx, ry) in zip(whole[7:], resumed):
      np.testing.assert_array_equal(x, rx)
      np.testing.assert_array_equal(y, ry)

  def test_epoch_deals_every_example_once(self):
    # Without augmentation, a training image is its evaluation crop, so an
    # epoch's rows can be matched against the split read in file order.
    epoch = self._steps(0, 5, augment=False)
    seen = [_digest(image) for images, _ in epoch
            for learner in images for image in learner]
    split = [_digest(image) for images, _, valid in streaming.eval_batches(
        self.data, 8, 0, 1, split=streaming.TRAIN_SPLIT)
             for image, ok in zip(images, valid) if ok]
    self.assertLen(set(split), NUM_EXAMPLES)  # All examples distinct.
    self.assertCountEqual(seen, split)
    # The next epoch is dealt in another order.
    next_epoch = self._steps(5, 5, augment=False)
    self.assertNotEqual([_digest(x) for x, _ in epoch],
                        [_digest(x) for x, _ in next_epoch])

  def test_seed_and_augmentation_change_the_stream(self):
    base = self._steps(0, 1)[0][0]
    self.assertFalse((self._steps(0, 1, seed=1)[0][0] == base).all())
    self.assertFalse((self._steps(0, 1, augment=False)[0][0] == base).all())

  def test_eval_batches_are_padded_to_equal_counts(self):
    batches = list(streaming.eval_batches(self.data, 16, 0, 1))
    self.assertEqual([int(v.sum()) for _, _, v in batches], [16, 16, 8])
    self.assertTrue(all(x.shape == (16, IMAGE_SIZE, IMAGE_SIZE, 3)
                        for x, _, _ in batches))


class NotPreparedTest(absltest.TestCase):

  def test_missing_imagenet_is_a_user_error_with_the_fix(self):
    empty = self.create_tempdir().full_path
    with self.assertRaisesRegex(UserError, 'is not prepared in .*tfds build '
                                'imagenet2012'):
      streaming.load('imagenet2012', empty, IMAGE_SIZE)


class StreamedRunTest(absltest.TestCase):
  """train_and_evaluate on the mocked ImageNet, in this process."""

  def _config(self, steps):
    from configs import imagenet  # pylint: disable=g-import-not-at-top
    c = imagenet.get_config()
    c.data.path = self.root
    c.data.image_size = IMAGE_SIZE
    c.data.batch_size = 4
    c.model.name = 'cnn_small'
    c.model.stem = 'cifar'
    c.hier.num_learners, c.hier.group_size = 4, 2
    c.hier.k1, c.hier.k2 = 2, 2
    c.opt.lr, c.opt.warmup_epochs = 0.05, 0.0
    c.train.steps = steps
    c.train.eval_every = 3
    c.train.log_every = 1
    c.train.checkpoint_every = 3
    c.train.eval_batch_size = 16
    return c

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = _mock_dir(cls)
    cls.enterClassContext(_mocked(cls.root))

  def test_run_trains_evaluates_and_resumes_exactly(self):
    from hier_avg import train  # pylint: disable=g-import-not-at-top
    whole = self.create_tempdir().full_path
    # 2 epochs and a half: 40 // 4 learners // 4 = 2 steps per epoch.
    summary = train.train_and_evaluate(self._config(5), whole)
    self.assertEqual(summary['steps'], 5)
    self.assertEqual(summary['epochs'], 2.5)
    self.assertBetween(summary['test_accuracy'], 0.0, 1.0)
    self.assertTrue(np.isfinite(summary['test_loss']))
    # 4 learners, 2 groups: global averagings after steps 4 only.
    self.assertEqual(summary['global_averagings'], 1)
    self.assertEqual(summary['local_averagings'], 1)

    # The same run in two pieces (stopped after its step-3 checkpoint)
    # gives the same losses and the same final model.
    pieces = self.create_tempdir().full_path
    train.train_and_evaluate(self._config(3), pieces)
    resumed = train.train_and_evaluate(self._config(5), pieces)
    self.assertEqual(resumed['resumed_from_step'], 3)
    rows = [_rows(d) for d in (whole, pieces)]
    self.assertEqual([r['train_loss'] for r in rows[0]],
                     [r['train_loss'] for r in rows[1]])
    self.assertEqual(summary['test_loss'], resumed['test_loss'])


def _rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r for r in map(json.loads, f) if 'train_loss' in r]


if __name__ == '__main__':
  jax.config.parse_flags_with_absl()
  absltest.main()
