"""Image classification data sets, loaded whole into host memory.

Sources (`data.name`):
  * a tfds name ('cifar10', 'cifar100', 'mnist', 'fashion_mnist'), with
    `data.path` as the tfds data_dir; tfds and TensorFlow are imported only
    here, so the other sources need neither;
  * 'folder': `data.path/{train,test}/<class>/*.{jpg,jpeg,png}`, classes in
    alphabetical order;
  * 'synthetic': class-dependent patterns plus noise, for tests and smoke runs.

Images stay uint8 on the host; normalization and augmentation run on device.
"""

import concurrent.futures
import dataclasses
import os

import numpy as np

from hier_avg.errors import UserError, require
from hier_avg.runtime import memory

TFDS_NAMES = ('cifar10', 'cifar100', 'mnist', 'fashion_mnist')
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
# Files decoded at once by the reader's threads.
DECODE_SLICE = 1024


@dataclasses.dataclass(frozen=True)
class Dataset:
  train_images: np.ndarray  # uint8 [N, H, W, C]
  train_labels: np.ndarray  # int32 [N]
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  mean: np.ndarray  # float32 [C], per channel, of train pixels in [0, 1].
  std: np.ndarray

  @property
  def image_shape(self) -> tuple[int, ...]:
    return self.train_images.shape[1:]


# The moments are taken in float64 a chunk of images at a time: a float copy
# of the whole set (1.2 GB for CIFAR-10) would set the peak memory. A chunk
# is 4096 images up to 32x32x3 (CIFAR: 96 MB), fewer for larger ones (4096
# 128-px images were 1.6 GB). The chunks of small images are as they always
# were, since they set the sums' rounding, hence the normalization.
CHUNK_IMAGES, CHUNK_VALUES = 4096, 4096 * 32 * 32 * 3


def _chunk_rows(image_shape) -> int:
  return max(1, min(CHUNK_IMAGES, CHUNK_VALUES // int(np.prod(image_shape))))


def _finish(train_images, train_labels, test_images, test_labels,
            num_classes) -> Dataset:
  channels = train_images.shape[-1]
  total, total_sq = np.zeros(channels), np.zeros(channels)
  rows = _chunk_rows(train_images.shape[1:])
  for start in range(0, len(train_images), rows):
    chunk = train_images[start:start + rows].reshape(-1, channels) / 255.0
    total += chunk.sum(0)
    # In place, and freed before the next chunk: one chunk at a time.
    total_sq += np.square(chunk, out=chunk).sum(0)
    del chunk
  count = len(train_images) * train_images[0].size // channels
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
  return Dataset(train_images, train_labels.astype(np.int32), test_images,
                 test_labels.astype(np.int32), num_classes,
                 mean.astype(np.float32), std.astype(np.float32))


def synthetic(num_train: int, num_test: int, image_size: int,
              num_classes: int, seed: int = 0) -> Dataset:
  """Learnable random data: each class is a fixed pattern plus noise."""
  rng = np.random.default_rng(seed)
  patterns = rng.uniform(0, 255, (num_classes, image_size, image_size, 3))

  def split(n):
    labels = rng.integers(0, num_classes, n)
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    # In chunks, so the float64 intermediates stay small (CIFAR-sized data
    # peaked at 3.7 GB in one piece).
    for start in range(0, n, 4096):
      chunk = labels[start:start + 4096]
      noise = rng.normal(0, 60, (len(chunk), image_size, image_size, 3))
      images[start:start + 4096] = np.clip(
          0.5 * patterns[chunk] + 64 + noise, 0, 255)
    return images, labels

  return _finish(*split(num_train), *split(num_test), num_classes)


def _decode(path: str) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert('RGB'))
  except Exception as e:  # Pillow raises several types for bad files.
    raise UserError(f'cannot read image {path}: {e}; remove or replace the '
                    'file.') from None


def _read_split(root: str, split: str, classes: list[str] | None):
  split_dir = os.path.join(root, split)
  require(os.path.isdir(split_dir),
          f'data folder {root} has no {split}/ subfolder; expected '
          f'{root}/{{train,test}}/<class>/*.jpg|png.')
  found = sorted(d for d in os.listdir(split_dir)
                 if os.path.isdir(os.path.join(split_dir, d)))
  if classes is None:
    classes = found
  require(classes, f'{split_dir} has no class subfolders; expected '
          f'{split_dir}/<class>/*.jpg|png.')
  unknown = sorted(set(found) - set(classes))
  require(not unknown, f'{split_dir} has classes {unknown} that train/ does '
          'not have; use the same class folders in train/ and test/.')
  paths, labels = [], []
  for label, name in enumerate(classes):
    class_dir = os.path.join(split_dir, name)
    if not os.path.isdir(class_dir):
      continue
    files = sorted(f for f in os.listdir(class_dir)
                   if f.lower().endswith(IMAGE_SUFFIXES))
    paths += [os.path.join(class_dir, f) for f in files]
    labels += [label] * len(files)
  require(paths, f'{split_dir} holds no .jpg/.jpeg/.png images; put images '
          f'in {split_dir}/<class>/.')
  # Decoded into one array allocated up front, a slice of files at a time:
  # a list of every decoded image, then np.stack, held the set twice.
  first = _decode(paths[0])
  images = np.empty((len(paths),) + first.shape, np.uint8)
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    for start in range(0, len(paths), DECODE_SLICE):
      chunk = paths[start:start + DECODE_SLICE]
      for i, image in enumerate(pool.map(_decode, chunk), start):
        require(image.shape == first.shape,
                f'images in {split_dir} have different sizes: '
                f'{paths[0]} is {first.shape}, {paths[i]} is {image.shape}; '
                'resize them all to one size.')
        images[i] = image
  return images, np.asarray(labels, np.int32), classes


def folder(root: str) -> Dataset:
  require(bool(root), "data.name='folder' needs data.path=<root of "
          "train/ and test/>.")
  require(os.path.isdir(root), f'data.path={root} does not exist or is not '
          'a folder; point it at a folder holding train/ and test/.')
  train_images, train_labels, classes = _read_split(root, 'train', None)
  test_images, test_labels, _ = _read_split(root, 'test', classes)
  require(train_images.shape[1:] == test_images.shape[1:],
          f'train images are {train_images.shape[1:]} but test images are '
          f'{test_images.shape[1:]}; use one image size for both.')
  return _finish(train_images, train_labels, test_images, test_labels,
                 len(classes))


def prepare_tfds(builder, name: str, data_dir: str, process_count: int,
                 how: str) -> None:
  """Prepares a tfds data set, in a run of one process only.

  Several processes preparing one data_dir at once would write over one
  another (and hosts with their own data_dirs would each download), so a
  multi-process run needs it prepared beforehand: `how` says how.
  """
  if builder.is_prepared():
    return
  where = data_dir or 'the default tfds data_dir (~/tensorflow_datasets)'
  require(process_count == 1,
          f'tfds data set {name!r} is not prepared in {where}; with '
          f'{process_count} processes, prepare it once before the run: '
          + how)
  builder.download_and_prepare()


def from_tfds(name: str, data_dir: str, process_count: int = 1) -> Dataset:
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError(f'data.name={name!r} needs tensorflow-datasets: pip '
                    'install tensorflow-cpu tensorflow-datasets, or use '
                    "data.name='folder'.") from None
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
    prepare_tfds(builder, name, data_dir, process_count,
                 f'`tfds build {name} --data_dir=<data.path>` on a machine '
                 'with internet access, then set data.path to that folder '
                 'on every host.')
    splits = {s: tfds.as_numpy(builder.as_dataset(
        split=s, batch_size=-1, as_supervised=True)) for s in ('train', 'test')}
  except UserError:
    raise
  except Exception as e:  # tfds raises many types for missing/bad data.
    raise UserError(f'could not load tfds data set {name!r} from '
                    f'{data_dir or "the default data_dir"}: '
                    f'{type(e).__name__}: {e}') from None
  num_classes = builder.info.features['label'].num_classes
  (train_x, train_y), (test_x, test_y) = splits['train'], splits['test']
  return _finish(train_x, train_y, test_x, test_y, num_classes)


def _check_synthetic_fits(data_config) -> None:
  """Refuses synthetic data larger than half the host's memory before any
  of it is made (its uint8 images, the augmentation's copies after)."""
  side = data_config.synthetic_image_size
  examples = (data_config.synthetic_train_examples +
              data_config.synthetic_test_examples)
  need = examples * side * side * 3
  have = memory.physical_memory_bytes()
  require(need <= have // 2,
          f'synthetic data of {examples} images of {side}x{side}x3 takes '
          f'{need / 2**30:.1f} GiB, more than half of this host\'s '
          f'{have / 2**30:.1f} GiB; lower data.synthetic_image_size or '
          'data.synthetic_train_examples / data.synthetic_test_examples.')


def load(data_config, seed: int = 0, process_count: int = 1) -> Dataset:
  """The data set that `data_config` (the config's `data` block) names."""
  name = data_config.name
  if name == 'synthetic':
    _check_synthetic_fits(data_config)
    return synthetic(data_config.synthetic_train_examples,
                     data_config.synthetic_test_examples,
                     data_config.synthetic_image_size,
                     data_config.synthetic_num_classes, seed)
  if name == 'folder':
    return folder(data_config.path)
  if name in TFDS_NAMES:
    return from_tfds(name, data_config.path, process_count)
  raise UserError(f'unknown data.name={name!r}; choose one of '
                  f"{', '.join(TFDS_NAMES)}, 'folder' or 'synthetic'.")
