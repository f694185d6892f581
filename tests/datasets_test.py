"""Data sources: image folders, synthetic data, and their errors."""

import os
import sys
from unittest import mock

from absl.testing import absltest
import numpy as np
from PIL import Image

from hier_avg.data import datasets
from hier_avg.errors import UserError

CLASSES = ('cat', 'dog', 'emu')


def write_folder(root, per_class=(3, 2), size=(8, 8), classes=CLASSES):
  """root/{train,test}/<class>/<i>.png with pixel value = 10 * class."""
  for split, count in zip(('train', 'test'), per_class):
    for label, name in enumerate(classes):
      os.makedirs(os.path.join(root, split, name), exist_ok=True)
      for i in range(count):
        pixels = np.full(size + (3,), 10 * label, np.uint8)
        Image.fromarray(pixels).save(
            os.path.join(root, split, name, f'{i}.png'))
  return root


class FolderTest(absltest.TestCase):

  def test_reads_classes_in_order(self):
    root = write_folder(self.create_tempdir().full_path)
    data = datasets.folder(root)
    self.assertEqual(data.train_images.shape, (9, 8, 8, 3))
    self.assertEqual(data.test_images.shape, (6, 8, 8, 3))
    self.assertEqual(data.num_classes, 3)
    np.testing.assert_array_equal(data.train_labels, [0] * 3 + [1] * 3 +
                                  [2] * 3)
    np.testing.assert_array_equal(data.train_images[:, 0, 0, 0],
                                  10 * data.train_labels)
    self.assertEqual(data.train_images.dtype, np.uint8)

  def test_missing_folder(self):
    with self.assertRaisesRegex(UserError, 'does not exist'):
      datasets.folder('/nonexistent/cifar')

  def test_empty_folder(self):
    root = self.create_tempdir().full_path
    with self.assertRaisesRegex(UserError, 'has no train/ subfolder'):
      datasets.folder(root)
    os.makedirs(os.path.join(root, 'train', 'cat'))
    with self.assertRaisesRegex(UserError, 'holds no .jpg'):
      datasets.folder(root)

  def test_mismatched_sizes(self):
    root = write_folder(self.create_tempdir().full_path)
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(
        os.path.join(root, 'train', 'cat', 'odd.png'))
    with self.assertRaisesRegex(UserError, 'different sizes'):
      datasets.folder(root)

  def test_unreadable_image(self):
    root = write_folder(self.create_tempdir().full_path)
    with open(os.path.join(root, 'test', 'dog', 'bad.jpg'), 'wb') as f:
      f.write(b'not an image')
    with self.assertRaisesRegex(UserError, 'cannot read image .*bad.jpg'):
      datasets.folder(root)


class SyntheticTest(absltest.TestCase):

  def test_deterministic_and_shaped(self):
    a = datasets.synthetic(20, 10, 8, 4, seed=1)
    b = datasets.synthetic(20, 10, 8, 4, seed=1)
    np.testing.assert_array_equal(a.train_images, b.train_images)
    self.assertEqual(a.train_images.shape, (20, 8, 8, 3))
    self.assertEqual(a.num_classes, 4)
    self.assertEqual(a.mean.shape, (3,))


class LoadTest(absltest.TestCase):

  def test_unknown_name(self):
    from ml_collections import ConfigDict  # pylint: disable=g-import-not-at-top
    with self.assertRaisesRegex(UserError, "unknown data.name='imagenet9'"):
      datasets.load(ConfigDict({'name': 'imagenet9', 'path': ''}))


if __name__ == '__main__':
  absltest.main()


class _FakeTfds:
  """Stands in for tensorflow_datasets: the glue code is what is tested."""

  def __init__(self, splits, num_classes):
    self.splits, self.num_classes, self.calls = splits, num_classes, []

  def builder(self, name, data_dir=None):
    self.calls.append((name, data_dir))
    fake = self

    class Builder:
      info = type('Info', (), {'features': {'label': type(
          'Label', (), {'num_classes': fake.num_classes})()}})()

      def is_prepared(self):
        return False

      def download_and_prepare(self):
        fake.calls.append('prepared')

      def as_dataset(self, split, batch_size, as_supervised):
        assert batch_size == -1 and as_supervised
        return fake.splits[split]

    return Builder()

  def as_numpy(self, dataset):
    return dataset


class TfdsTest(absltest.TestCase):

  def test_reads_both_splits(self):
    images = np.zeros((6, 28, 28, 1), np.uint8)
    fake = _FakeTfds({'train': (images, np.arange(6) % 3),
                      'test': (images[:2], np.array([0, 2]))}, 3)
    with mock.patch.dict(sys.modules, {'tensorflow_datasets': fake}):
      data = datasets.from_tfds('mnist', '/data/tfds')
    self.assertEqual(fake.calls, [('mnist', '/data/tfds'), 'prepared'])
    self.assertEqual(data.train_images.shape, (6, 28, 28, 1))
    self.assertEqual(data.num_classes, 3)
    self.assertEqual(data.mean.shape, (1,))
    self.assertEqual(data.test_labels.dtype, np.int32)

  def test_several_processes_never_prepare_it(self):
    fake = _FakeTfds({}, 3)
    with mock.patch.dict(sys.modules, {'tensorflow_datasets': fake}):
      with self.assertRaisesRegex(UserError, "tfds data set 'mnist' is not "
                                  'prepared in /data/tfds; with 2 processes, '
                                  'prepare it once before the run'):
        datasets.from_tfds('mnist', '/data/tfds', process_count=2)
    self.assertEqual(fake.calls, [('mnist', '/data/tfds')])

  def test_missing_tfds_is_a_one_line_error(self):
    with mock.patch.dict(sys.modules, {'tensorflow_datasets': None}):
      with self.assertRaisesRegex(UserError, 'needs tensorflow-datasets'):
        datasets.from_tfds('cifar10', '')
