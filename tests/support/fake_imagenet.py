"""A real imagenet2012 in miniature: tiny ILSVRC2012 archives tfds prepares."""

import io
import os
import tarfile

import numpy as np
from PIL import Image


def archives(root, synsets=('n01440764', 'n01443537'),
             per_class=12, num_validation=10, seed=0) -> str:
  """ILSVRC2012_img_{train,val}.tar of random JPEGs in root/downloads/manual.

  The layout of the real archives: the train tar holds one tar per synset
  (the first two of ImageNet's classes here), the val tar flat files whose
  labels tfds takes from its own list. Returns `root`, the tfds data_dir.
  """
  rng = np.random.default_rng(seed)

  def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))

  def jpeg():
    size = tuple(int(n) for n in rng.integers(20, 60, 2)) + (3,)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size, np.uint8)).save(buffer, 'JPEG')
    return buffer.getvalue()

  manual = os.path.join(root, 'downloads', 'manual')
  os.makedirs(manual)
  with tarfile.open(os.path.join(manual, 'ILSVRC2012_img_train.tar'),
                    'w') as train:
    for synset in synsets:
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as images:
        for i in range(per_class):
          add(images, f'{synset}_{i}.JPEG', jpeg())
      add(train, f'{synset}.tar', inner.getvalue())
  with tarfile.open(os.path.join(manual, 'ILSVRC2012_img_val.tar'),
                    'w') as validation:
    for i in range(num_validation):
      add(validation, f'ILSVRC2012_val_{i + 1:08d}.JPEG', jpeg())
  return root
