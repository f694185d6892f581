"""Streamed ImageNet (tfds imagenet2012): mocked, and prepared for real.

`tfds.testing.mock_data` serves random JPEGs of random sizes for any split;
its data_dir holds real tfds metadata (features, split sizes), written by
`_mock_dir`, so the code under test reads split sizes exactly as from a
prepared ImageNet. The mock ignores which part of a split is asked for, so
the per-host reading is tested on a real imagenet2012 that tfds prepares
from tiny ILSVRC2012 archives (`support.fake_imagenet`), as a user's
would be.
"""

import contextlib
import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import types

from absl.testing import absltest
import pytest
import jax
import numpy as np

from configs import imagenet
from hier_avg import config_keys
from hier_avg.data import feeds
from hier_avg.data import streaming
from hier_avg import train
from hier_avg.errors import UserError
from tests.support import devices
from tests.support import engines
from tests.support import fake_imagenet
from tests.support import launcher
from tests.support import outputs

NUM_EXAMPLES = 40  # Per split (the mock yields this many for every split).
IMAGE_SIZE = 32


def setUpModule():
  devices.set_up_devices()


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

  def test_rounds_are_cut_to_a_gigabyte_of_images(self):
    config = imagenet.get_config()  # 8 learners x 128 images of 224x224.
    data = dataclasses.replace(self.data, image_size=224,
                               num_train=1_281_167)
    feed = feeds.StreamedFeed(data, config.data, 8, 0)
    engine = types.SimpleNamespace(topology=types.SimpleNamespace(
        process_learner_ids=lambda: np.arange(8)))
    feed.start(engine, 0)
    # One step is 8 * 128 * 224 * 224 * 3 = 154 MB: 6 steps stay under 1 GiB.
    self.assertEqual(feed.max_round_length, 6)

  def test_eval_batches_are_padded_to_equal_counts(self):
    batches = list(streaming.eval_batches(self.data, 16, 0, 1))
    self.assertEqual([int(v.sum()) for _, _, v in batches], [16, 16, 8])
    self.assertTrue(all(x.shape == (16, IMAGE_SIZE, IMAGE_SIZE, 3)
                        for x, _, _ in batches))


class PerHostTest(absltest.TestCase):
  """Two processes' shares of a real prepared imagenet2012 (24 + 10)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    root = tempfile.mkdtemp(prefix='fake_imagenet_')
    cls.addClassCleanup(shutil.rmtree, root, ignore_errors=True)
    # Prepares it, as the first run on a user's archives does.
    cls.data = streaming.load('imagenet2012',
                              fake_imagenet.archives(root), IMAGE_SIZE)

  def _split(self, split):
    return [(_digest(x), int(y)) for images, labels, valid in
            streaming.eval_batches(self.data, 8, 0, 1, split=split)
            for x, y, ok in zip(images, labels, valid) if ok]

  def test_prepared_from_the_manual_archives(self):
    self.assertEqual((self.data.num_train, self.data.num_test), (24, 10))
    train = self._split(streaming.TRAIN_SPLIT)
    self.assertLen({d for d, _ in train}, 24)
    # Labels are the synsets' indices among ImageNet's 1000 classes.
    self.assertCountEqual([y for _, y in train], [0] * 12 + [1] * 12)

  def test_processes_read_disjoint_halves_each_epoch(self):
    # P = 4 learners, 2 per process, B = 3: (24 // 4) // 3 = 2 steps per
    # epoch, 6 examples per process per step.
    shares = []
    for process in range(2):
      batches = streaming.train_batches(self.data, 4, 3, 2, 0, 0, False,
                                        process, 2)
      epoch = [next(batches) for _ in range(2)]
      shares.append([(_digest(x), int(y)) for images, labels in epoch
                     for x, y in zip(images.reshape((-1,) + images.shape[2:]),
                                     labels.reshape(-1))])
    self.assertLen(set(shares[0]), 12)
    self.assertLen(set(shares[1]), 12)
    self.assertCountEqual(shares[0] + shares[1],
                          self._split(streaming.TRAIN_SPLIT))

  def test_processes_draw_their_own_shuffles_and_augmentations(self):
    seeds = {streaming._epoch_seed(0, epoch, process)  # pylint: disable=protected-access
             for epoch in range(3) for process in range(4)}
    self.assertLen(seeds, 12)
    # One process keeps the seeds single-process runs always had.
    self.assertEqual(streaming._epoch_seed(5, 2, 0),  # pylint: disable=protected-access
                     int(np.random.SeedSequence(
                         [5, streaming._STREAM, 2]).generate_state(1)[0]))  # pylint: disable=protected-access

  def test_processes_evaluate_the_validation_split_once(self):
    seen, counts = [], []
    for process in range(2):
      batches = list(streaming.eval_batches(self.data, 4, process, 2))
      counts.append(len(batches))
      seen += [(_digest(x), int(y)) for images, labels, valid in batches
               for x, y, ok in zip(images, labels, valid) if ok]
    self.assertEqual(counts, [2, 2])  # 5 each, in batches of 4.
    self.assertCountEqual(seen, self._split(streaming.TEST_SPLIT))


  def test_recomputed_statistics_are_of_the_first_training_images(self):
    # hier.batch_stats=recompute on a streamed set, one batch per device.
    learner = engines.make_learner('bn')
    learner = dataclasses.replace(learner, mean=self.data.mean,
                                  std=self.data.std, augment=False)
    engine = engines.make_engine(learner, 8, 4, 2, 2, (2, 4))
    config = imagenet.get_config()
    config.data.batch_size = 2
    feed = feeds.StreamedFeed(self.data, config.data, 8, 0)
    feed.start(engine, 0)
    params, batch_stats = engine.kernels.global_average(
        engine.init_state(0, self.data.image_shape))
    # 5 batches of 2 round up to one per device: 8, the first 16 images.
    got = feed.recompute_batch_stats(params, batch_stats, 5, 2)
    images = next(streaming.eval_batches(self.data, 16, 0, 1,
                                         split=streaming.TRAIN_SPLIT))[0]
    want_mean, want_var = engines.tiny_bn_batch_moments(
        params, images, self.data.mean, self.data.std, 2)
    np.testing.assert_allclose(got['BatchNorm_0']['mean'], want_mean,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got['BatchNorm_0']['var'], want_var,
                               rtol=1e-4, atol=1e-5)
    with self.assertRaisesRegex(UserError, 'lower hier.recompute_batches'):
      feed.recompute_batch_stats(params, batch_stats, 16, 2)  # 32 > 24.


class NotPreparedTest(absltest.TestCase):

  def test_missing_imagenet_is_a_user_error_with_the_fix(self):
    empty = self.create_tempdir().full_path
    with self.assertRaisesRegex(UserError, 'is not prepared in .*tfds build '
                                'imagenet2012'):
      streaming.load('imagenet2012', empty, IMAGE_SIZE)

  def test_several_processes_never_prepare_it_at_once(self):
    root = fake_imagenet.archives(self.create_tempdir().full_path)
    with self.assertRaisesRegex(UserError, 'with 2 processes, prepare it '
                                'once before the run'):
      streaming.load('imagenet2012', root, IMAGE_SIZE, process_count=2)
    self.assertFalse(os.path.exists(os.path.join(root, 'imagenet2012')))


class WithoutTensorflowTest(absltest.TestCase):

  def test_only_streamed_sets_need_tensorflow(self):
    # Accelerator images often lack TensorFlow: the library must import and
    # train on resident data without it, and say what a stream needs.
    code = (
        "import sys\n"
        "for name in ('tensorflow', 'tensorflow_datasets'):\n"
        "  sys.modules[name] = None  # Any import of it fails.\n"
        "from hier_avg import errors, train\n"
        "from hier_avg.data import streaming\n"
        "try:\n"
        "  streaming.load('imagenet2012', '', 224)\n"
        "except errors.UserError as e:\n"
        "  print(e)\n")
    result = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True,
        env=launcher.python_env(), check=True)
    self.assertIn('streamed data sets need tensorflow and '
                  'tensorflow-datasets', result.stdout)


class ImagenetConfigTest(absltest.TestCase):

  def test_presets_are_valid_and_keep_the_recipe(self):
    for preset, levels in (('', (4, 4, 4)), ('kavg', (1, 16, 1)),
                           ('sync', (4, 1, 1))):
      c = imagenet.get_config(preset)
      config_keys.validate(c)
      self.assertEqual((c.hier.group_size, c.hier.k1, c.hier.k2), levels)
      self.assertEqual((c.data.name, c.data.image_size, c.model.name,
                        c.model.stem), ('imagenet2012', 224, 'resnet50',
                                        'imagenet'))
      self.assertEqual(c.hier.num_learners * c.data.batch_size, 1024)


@pytest.mark.slow
class StreamedRunTest(absltest.TestCase):
  """train_and_evaluate on the mocked ImageNet, in this process."""

  def _config(self, steps):
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
    # Periods snap to K1 = 2. Checkpoints only at the end: under
    # tfds.testing.mock_data, orbax lost the array metadata of periodic
    # saves made two steps apart or before the first evaluation (a real
    # streamed run, `launch.py` on tests/support/fake_imagenet with
    # checkpoint_every=1, saves every step).
    c.train.eval_every = 2
    c.train.log_every = 1
    c.train.checkpoint_every = 0
    c.train.eval_batch_size = 16
    return c

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = _mock_dir(cls)
    cls.enterClassContext(_mocked(cls.root))

  def test_run_trains_evaluates_and_resumes_exactly(self):
    whole = self.create_tempdir().full_path
    # 40 // 4 learners // 4 = 2 steps per pass, each using 32 of the 40
    # examples: 5 steps see 80 examples, 2 epochs.
    summary = train.train_and_evaluate(self._config(5), whole)
    self.assertEqual(summary['steps'], 5)
    self.assertEqual(summary['epochs'], 2.0)
    self.assertBetween(summary['test_accuracy'], 0.0, 1.0)
    self.assertTrue(np.isfinite(summary['test_loss']))
    # 4 learners, 2 groups: global averagings after steps 4 only.
    self.assertEqual(summary['global_averagings'], 1)
    self.assertEqual(summary['local_averagings'], 1)

    # The same run in two pieces (stopped after 3 steps, then resumed from
    # their final checkpoint) gives the same losses and the same final
    # model: rounds of one step (log_every=1), so both make the same
    # compiled calls, and equality to the bit holds on any CPU.
    pieces = self.create_tempdir().full_path
    train.train_and_evaluate(self._config(3), pieces)
    resumed = train.train_and_evaluate(self._config(5), pieces)
    self.assertEqual(resumed['resumed_from_step'], 3)
    rows = [[r for r in outputs.metrics_rows(d) if 'train_loss' in r]
            for d in (whole, pieces)]
    self.assertEqual([r['train_loss'] for r in rows[0]],
                     [r['train_loss'] for r in rows[1]])
    self.assertEqual(summary['test_loss'], resumed['test_loss'])


if __name__ == '__main__':
  jax.config.parse_flags_with_absl()
  absltest.main()
