r"""The `:cpu` preset on the real CIFAR-10: accuracy and images/s per layout.

  python benchmarks/cpu_cifar10.py --archive=../shared/data/cifar10-jpeg.tar.gz

cnn_small, P = 8 learners in 2 groups of 4, K1 = K2 = 4, B = 32, SGD lr 0.05,
momentum 0.9, no augmentation, 400 steps. Runs the same training once per
device layout (8 fake CPU devices with one learner each, and packings of
several learners per device) and prints one table, so the ratios are measured
side by side on the same machine.
"""

import os
import sys

_DEVICES = 8
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           f' --xla_force_host_platform_device_count={_DEVICES}')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import itertools  # pylint: disable=g-import-not-at-top,wrong-import-position
import platform
import tarfile
import tempfile

from absl import app
from absl import flags
from absl import logging
import jax

from configs import cifar10
from hier_avg import train

_ARCHIVE = flags.DEFINE_string(
    'archive', '../shared/data/cifar10-jpeg.tar.gz',
    'CIFAR-10 as JPEG folders, tar.gz of {train,test}/<class>/*.jpg.')
_DATA_DIR = flags.DEFINE_string(
    'data_dir', os.path.join(tempfile.gettempdir(), 'hier_avg_cifar10'),
    'Where the archive is unpacked (once).')
_STEPS = flags.DEFINE_integer('steps', 400, 'Local steps per run.')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'Seeds to run for each layout.')
_LAYOUTS = flags.DEFINE_list(
    'layouts', ['2x4', '1x1'],
    'Meshes to run, as node_devices x local_devices (2x4: one learner per '
    'device; 1x1: all 8 learners packed on one device).')


def unpack(archive: str, data_dir: str) -> str:
  if not os.path.isdir(os.path.join(data_dir, 'train')):
    if not os.path.exists(archive):
      sys.exit(f'error: {archive} not found; pass --archive=PATH to '
               'cifar10-jpeg.tar.gz.')
    os.makedirs(data_dir, exist_ok=True)
    with tarfile.open(archive) as tar:
      tar.extractall(data_dir, filter='data')
  return data_dir


def main(argv):
  del argv
  data_dir = unpack(_ARCHIVE.value, _DATA_DIR.value)
  rows = []
  for layout, seed in itertools.product(_LAYOUTS.value, _SEEDS.value):
    node, local = (int(x) for x in layout.split('x'))
    config = cifar10.get_config('cpu')
    config.seed = int(seed)
    config.data.name = 'folder'
    config.data.path = data_dir
    config.train.steps = _STEPS.value
    config.train.eval_every = 0
    config.mesh.node_devices, config.mesh.local_devices = node, local
    workdir = tempfile.mkdtemp(prefix=f'cpu_cifar10_{layout}_')
    logging.info('layout %s -> %s', layout, workdir)
    summary = train.train_and_evaluate(config, workdir)
    rows.append((layout, seed, summary))

  print(f'\ncnn_small on CIFAR-10, P=8 (2x4), K1=K2=4, B=32, {_STEPS.value} '
        f'steps; {platform.processor() or platform.machine()}, '
        f'{os.cpu_count()} cores, jax {jax.__version__}\n')
  print('| mesh (node x local) | learners/device | seed | test accuracy | '
        'train images/s | wall s |')
  print('|---|---|---|---|---|---|')
  for layout, seed, s in rows:
    node, local = (int(x) for x in layout.split('x'))
    print(f'| {layout} | {8 // (node * local)} | {seed} | '
          f'{s["test_accuracy"]:.4f} | {s["images_per_s"]:.0f} | '
          f'{s["wall_s"]:.0f} |')


if __name__ == '__main__':
  app.run(main)
