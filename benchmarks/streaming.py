r"""How fast one host streams ImageNet-sized JPEGs (hier_avg/data/streaming.py).

  python benchmarks/streaming.py --images=2000 --image_size=224

Builds a stand-in imagenet2012 once under --data_dir (random smooth JPEGs of
ImageNet's typical 500x375 size, prepared by tfds from ILSVRC2012-style
archives, as a real one is), then measures, side by side in one run:
  * the training stream: decode + random-resized crop + flip to
    image_size, dealt to --learners learners of --batch_size each;
  * the same without augmentation (centre crop);
  * the evaluation stream (centre crop, padded batches).
Images/s here is what one process can feed its devices; compare it with
what its devices consume (DESIGN.md: ResNet-18 on one H200 at ~97k
images/s in bf16; ResNet-50 is ~3x the compute).
"""

import io
import os
import sys
import tarfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
import numpy as np
from PIL import Image

from hier_avg.data import streaming

_DATA_DIR = flags.DEFINE_string('data_dir', '/tmp/hier_avg_fake_imagenet',
                                'Where the stand-in imagenet2012 is kept.')
_IMAGES = flags.DEFINE_integer('images', 2000, 'Training images to build.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Output crop size.')
_LEARNERS = flags.DEFINE_integer('learners', 8, 'Learners on this host.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Per learner.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per stream.')

SYNSETS = ('n01440764', 'n01443537', 'n01484850', 'n01491361', 'n01494475',
           'n01496331', 'n01498041', 'n01514668', 'n01514859', 'n01518878')
SIZE = (375, 500)  # ImageNet's most common (height, width).


def _jpeg(rng) -> bytes:
  # Smooth random colour fields: JPEG sizes near real photos' (~100 KB),
  # unlike white noise, which would make decoding unrealistically slow.
  small = rng.integers(0, 256, (12, 16, 3), np.uint8)
  image = Image.fromarray(small).resize(SIZE[::-1], Image.BICUBIC)
  buffer = io.BytesIO()
  image.save(buffer, 'JPEG', quality=90)
  return buffer.getvalue()


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def build(root: str, num_images: int) -> None:
  manual = os.path.join(root, 'downloads', 'manual')
  if os.path.exists(manual):
    return
  os.makedirs(manual)
  rng = np.random.default_rng(0)
  with tarfile.open(os.path.join(manual, 'ILSVRC2012_img_train.tar'),
                    'w') as train:
    for synset in SYNSETS:
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as images:
        for i in range(num_images // len(SYNSETS)):
          _add(images, f'{synset}_{i}.JPEG', _jpeg(rng))
      _add(train, f'{synset}.tar', inner.getvalue())
  with tarfile.open(os.path.join(manual, 'ILSVRC2012_img_val.tar'),
                    'w') as validation:
    for i in range(max(1, num_images // 2)):
      _add(validation, f'ILSVRC2012_val_{i + 1:08d}.JPEG', _jpeg(rng))


def _rate(batches, steps: int, images_per_step: int) -> float:
  next(batches)  # Warm-up: the pipeline starts and fills its buffers.
  start = time.perf_counter()
  for _ in range(steps):
    next(batches)
  return steps * images_per_step / (time.perf_counter() - start)


def main(argv):
  del argv
  build(_DATA_DIR.value, _IMAGES.value)
  start = time.perf_counter()
  data = streaming.load('imagenet2012', _DATA_DIR.value, _IMAGE_SIZE.value)
  prepare_s = time.perf_counter() - start
  learners, batch = _LEARNERS.value, _BATCH.value
  per_step = learners * batch
  steps = min(_STEPS.value,
              streaming.steps_per_epoch(data, learners, batch) - 1)
  rows = []
  for name, augment in (('train, random-resized crop + flip', True),
                        ('train, centre crop', False)):
    stream = streaming.train_batches(data, learners, batch, learners, 0, 0,
                                     augment, 0, 1)
    rows.append((name, _rate(stream, steps, per_step)))
  evaluation = streaming.eval_batches(data, per_step, 0, 1)
  rows.append(('evaluation, centre crop',
               _rate(evaluation, min(steps, data.num_test // per_step - 1),
                     per_step)))
  print(f'\n{os.cpu_count()} cores; {data.num_train} training JPEGs of '
        f'{SIZE[1]}x{SIZE[0]} -> {_IMAGE_SIZE.value}x{_IMAGE_SIZE.value}, '
        f'{learners} learners x {batch}; load/prepare {prepare_s:.1f} s\n')
  print('| stream | images/s | per core |')
  print('|---|---|---|')
  for name, rate in rows:
    print(f'| {name} | {rate:,.0f} | {rate / os.cpu_count():,.0f} |')


if __name__ == '__main__':
  app.run(main)
