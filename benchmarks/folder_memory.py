r"""Peak host memory of reading an image folder (`data.name=folder`).

  python benchmarks/folder_memory.py --root=/path/to/cifar10
  python benchmarks/folder_memory.py --images=4000 --image_size=128

With --root, reads that folder; otherwise builds a folder of random PNGs
(--images training and a tenth as many test images, 4 classes) under
--build_dir once. Each reading runs in a fresh process, so its peak RSS
(`ru_maxrss`) is its own: one row for reading the training split alone
(`_read_split`) and one for the whole data set (`datasets.folder`: both
splits, then the per-channel moments).
"""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
import numpy as np
from PIL import Image

_ROOT = flags.DEFINE_string('root', '', 'A folder root/{train,test}/<class>/.')
_BUILD_DIR = flags.DEFINE_string('build_dir', '/tmp/hier_avg_folder_memory',
                                 'Where the random folder is built.')
_IMAGES = flags.DEFINE_integer('images', 4000, 'Training images to build.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 128, 'Their side.')

# Run in a fresh process: prints images MiB, RSS before and peak RSS (KiB).
_MEASURE = r'''
import resource, sys
from hier_avg.data import datasets
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[2] == 'split':
  held = datasets._read_split(sys.argv[1], 'train', None)[0].nbytes
else:
  data = datasets.folder(sys.argv[1])
  held = data.train_images.nbytes + data.test_images.nbytes
print(held / 2**20, before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
'''


def build(root: str, images: int, size: int) -> str:
  """A folder of random PNGs, built once."""
  root = os.path.join(root, f'{images}x{size}')
  if os.path.isdir(root):
    return root
  rng = np.random.default_rng(0)
  for split, count in (('train', images), ('test', images // 10)):
    for label in range(4):
      folder = os.path.join(root, split, f'class{label}')
      os.makedirs(folder, exist_ok=True)
      for i in range(count // 4):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), np.uint8)).save(
            os.path.join(folder, f'{i}.png'))
  return root


def main(argv):
  del argv
  root = _ROOT.value or build(_BUILD_DIR.value, _IMAGES.value,
                              _IMAGE_SIZE.value)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  print(f'{root}\n')
  print('| read | images MiB | peak RSS MiB | peak - start MiB |')
  print('|---|---|---|---|')
  for what in ('split', 'folder'):
    out = subprocess.run(
        [sys.executable, '-c', _MEASURE, root, what], check=True,
        capture_output=True, text=True, cwd=repo,
        env=dict(os.environ, PYTHONPATH=repo))
    held, before, peak = map(float, out.stdout.split())
    label = 'train split' if what == 'split' else 'whole data set'
    print(f'| {label} | {held:.0f} | {peak / 1024:.0f} | '
          f'{(peak - before) / 1024:.0f} |')


if __name__ == '__main__':
  app.run(main)
