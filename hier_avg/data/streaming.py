"""Data sets too large for memory (ImageNet), streamed from tfds by each host.

A resident data set (`datasets.py`) sits whole on every device; ImageNet's
1.28 M JPEGs (~140 GB) cannot. Here every process reads only its own
`1/process_count` of the prepared tfds files, decodes and augments on the
host with tf.data, and hands the engine uint8 batches for its own learners;
normalization stays on device, so 4x fewer bytes cross to the device.

Sampling is 'partition', streamed: each epoch, a process shuffles its shard
(files, then a buffer) with a seed of `(seed, epoch)` and deals it out to
its learners in batches of B, so within an epoch no two learners see the
same example. An epoch is `(N // P) // B` steps, as for resident data.
Everything random is seeded by `(seed, epoch, process, position)`, so a
stream is reproducible, hosts draw different crops and flips, and resuming
at step t skips t's predecessors in the epoch as encoded records, without
decoding them. The order depends on the process count: a streamed run
resumed with another number of processes continues with another data order.

tfds and TensorFlow are imported only here, when a streamed set is asked
for; TensorFlow is kept off any GPU.
"""

import dataclasses
import itertools
import math
from typing import Any, Iterator

import numpy as np

from hier_avg.data import datasets
from hier_avg.errors import UserError, require

STREAMED_NAMES = ('imagenet2012',)
TRAIN_SPLIT, TEST_SPLIT = 'train', 'validation'
# ImageNet's per-channel moments of [0, 1] pixels (the torchvision values).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Encoded examples held for shuffling, per process (~1 GB of ImageNet).
SHUFFLE_BUFFER = 10_000
# Evaluation: centre crop of image_size / (image_size + 32) of the short
# side (224 of 256), resized to image_size.
CROP_PADDING = 32
# Inception-style random-resized crop (Szegedy et al. 2015).
CROP_AREA = (0.08, 1.0)
CROP_ASPECT = (3 / 4, 4 / 3)
_STREAM = 103  # Random stream of the streamed sampling.


@dataclasses.dataclass(frozen=True)
class StreamedDataset:
  """A prepared tfds data set and what the run needs to know about it."""
  name: str
  builder: Any  # tfds.core.DatasetBuilder
  num_classes: int
  num_train: int
  num_test: int
  image_size: int
  mean: np.ndarray  # float32 [3]
  std: np.ndarray

  @property
  def image_shape(self) -> tuple[int, ...]:
    return (self.image_size, self.image_size, 3)


def _tfds():
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError('streamed data sets need tensorflow and '
                    'tensorflow-datasets: pip install -r requirements.txt.'
                    ) from None
  # The host pipeline must not take accelerator memory from JAX.
  tf.config.set_visible_devices([], 'GPU')
  return tf, tfds


def load(name: str, data_dir: str, image_size: int,
         process_count: int = 1) -> StreamedDataset:
  """The prepared tfds data set `name` in `data_dir`; reads no examples.

  A single process prepares it first if needed (for imagenet2012, from the
  archives in `data_dir/downloads/manual`; nothing is downloaded). Several
  processes must find it prepared: preparing it on each at once would make
  them write over one another.
  """
  require(name in STREAMED_NAMES, f'{name!r} is not a streamed data set; '
          f'choose one of {", ".join(STREAMED_NAMES)}.')
  _, tfds = _tfds()
  where = data_dir or 'the default tfds data_dir (~/tensorflow_datasets)'
  fix = (f'put ILSVRC2012_img_{{train,val}}.tar in <data.path>/downloads/'
         f'manual/ and run `tfds build {name} --data_dir=<data.path>`, then '
         'set data.path.')
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
    datasets.prepare_tfds(builder, name, data_dir, process_count, fix)
    splits = builder.info.splits
    num_train = splits[TRAIN_SPLIT].num_examples
    num_test = splits[TEST_SPLIT].num_examples
  except UserError:
    raise
  except Exception as e:  # tfds raises many types for missing/bad data.
    raise UserError(
        f'tfds data set {name!r} is not prepared in {where}: '
        f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}; '
        + fix) from None
  return StreamedDataset(
      name, builder, builder.info.features['label'].num_classes, num_train,
      num_test, image_size, np.asarray(IMAGENET_MEAN, np.float32),
      np.asarray(IMAGENET_STD, np.float32))


def steps_per_epoch(data: StreamedDataset, num_learners: int,
                    batch_size: int) -> int:
  """`(N // P) // B`, as `sampling.Sampler` counts an epoch."""
  shard = data.num_train // num_learners
  require(batch_size <= shard,
          f'data.batch_size={batch_size} is larger than the {shard} '
          f'examples each of the {num_learners} learners gets from '
          f'{data.num_train}; lower data.batch_size or hier.num_learners.')
  return shard // batch_size


def _epoch_seed(seed: int, epoch: int, process_index: int) -> int:
  """The seed of one process's shuffle and augmentation in one epoch.

  Every process reads its own files, but positions in its stream repeat
  across processes: without the process index, hosts would draw the same
  flips and crop boxes at the same positions. Process 0 keeps the seed a
  single-process run has always had.
  """
  entropy = [seed, _STREAM, epoch] + ([process_index] if process_index else [])
  return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _train_image(tf, encoded, seed_2, image_size: int, augment: bool):
  """Random-resized crop and flip of one JPEG, or the evaluation crop."""
  if not augment:
    return _eval_image(tf, encoded, image_size)
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed_2, 2))
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.image.extract_jpeg_shape(encoded),
      bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=(1, 1, 4)),
      seed=crop_seed, min_object_covered=0.1, aspect_ratio_range=CROP_ASPECT,
      area_range=CROP_AREA, max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  window = tf.stack([begin[0], begin[1], size[0], size[1]])
  image = tf.io.decode_and_crop_jpeg(encoded, window, channels=3)
  image = _resize(tf, image, image_size)
  return tf.image.stateless_random_flip_left_right(image, flip_seed)


def _eval_image(tf, encoded, image_size: int):
  """Centre crop of image_size/(image_size+32) of the short side, resized."""
  shape = tf.image.extract_jpeg_shape(encoded)
  height, width = shape[0], shape[1]
  crop = tf.cast(image_size / (image_size + CROP_PADDING) *
                 tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
  crop = tf.maximum(crop, 1)
  window = tf.stack([(height - crop + 1) // 2, (width - crop + 1) // 2, crop,
                     crop])
  image = tf.io.decode_and_crop_jpeg(encoded, window, channels=3)
  return _resize(tf, image, image_size)


def _resize(tf, image, image_size: int):
  image = tf.image.resize(image, (image_size, image_size), 'bicubic')
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _read(tfds, data: StreamedDataset, split, shuffle_seed: int | None):
  read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed)
  return data.builder.as_dataset(
      split=split, shuffle_files=shuffle_seed is not None,
      read_config=read_config,
      decoders={'image': tfds.decode.SkipDecoding()})


def train_batches(data: StreamedDataset, num_learners: int, batch_size: int,
                  local_learners: int, first_step: int, seed: int,
                  augment: bool, process_index: int, process_count: int
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """This process's minibatches from step `first_step` on, forever.

  Yields (uint8 [L, B, H, W, C], int32 [L, B]) per step, row l for the
  process's l-th learner (`Engine.process_learner_ids` order).
  """
  tf, tfds = _tfds()
  spe = steps_per_epoch(data, num_learners, batch_size)
  per_step = local_learners * batch_size
  # drop_remainder: every process's shard has the same size, so all take
  # the same number of steps per epoch.
  shard = tfds.even_splits(TRAIN_SPLIT, n=process_count,
                           drop_remainder=True)[process_index]
  first_epoch, skip = divmod(first_step, spe)
  for epoch in itertools.count(first_epoch):
    epoch_seed = _epoch_seed(seed, epoch, process_index)
    ds = _read(tfds, data, shard, epoch_seed)
    ds = ds.shuffle(SHUFFLE_BUFFER, seed=epoch_seed,
                    reshuffle_each_iteration=False)
    ds = ds.take(spe * per_step).enumerate()
    # Skipped records are never decoded.
    ds = ds.skip(skip * per_step)
    skip = 0

    def example(position, ex, epoch_seed=epoch_seed):
      seed_2 = tf.stack([tf.constant(epoch_seed % 2**62, tf.int64),
                         position])
      return (_train_image(tf, ex['image'], seed_2, data.image_size,
                           augment), tf.cast(ex['label'], tf.int32))

    ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    ds = ds.batch(per_step, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    for images, labels in tfds.as_numpy(ds):
      yield (images.reshape((local_learners, batch_size) + images.shape[1:]),
             labels.reshape(local_learners, batch_size))


def eval_batches(data: StreamedDataset, batch_size: int, process_index: int,
                 process_count: int, split: str = TEST_SPLIT
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """This process's share of `split`, in file order, in padded batches.

  Yields (uint8 [b, H, W, C], int32 [b], bool [b] valid) with
  b = `batch_size`, centre-cropped; every process yields the same number of
  batches (the short ones padded with invalid rows), so their collectives
  line up.
  """
  tf, tfds = _tfds()
  shard = tfds.even_splits(split, n=process_count)[process_index]
  num_examples = data.num_test if split == TEST_SPLIT else data.num_train
  num_batches = math.ceil(math.ceil(num_examples / process_count) /
                          batch_size)
  ds = _read(tfds, data, shard, None).map(
      lambda ex: (_eval_image(tf, ex['image'], data.image_size),
                  tf.cast(ex['label'], tf.int32)),
      num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
  shape = data.image_shape
  batches = iter(tfds.as_numpy(ds))
  for _ in range(num_batches):
    images, labels = next(batches, (np.zeros((0,) + shape, np.uint8),
                                    np.zeros((0,), np.int32)))
    n = len(labels)
    pad = batch_size - n
    yield (np.concatenate([images, np.zeros((pad,) + shape, np.uint8)]),
           np.concatenate([labels, np.zeros((pad,), np.int32)]),
           np.arange(batch_size) < n)
