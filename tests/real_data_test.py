"""A short run on the real CIFAR-10 (skipped where the archive is absent)."""

import os
import tarfile

from absl.testing import absltest
import pytest

from configs import cifar10
from hier_avg import train
from tests.support import devices

# A run on the real CIFAR-10.
pytestmark = pytest.mark.slow

ARCHIVE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'shared', 'data', 'cifar10-jpeg.tar.gz')


KEEP = {'train': 500, 'test': 100}  # Images per class.


def _index(name: str) -> int:
  """train/cat/0123.jpg -> 123."""
  return int(os.path.splitext(os.path.basename(name))[0])


def setUpModule():
  devices.set_up_devices()


@absltest.skipUnless(os.path.exists(ARCHIVE), f'{ARCHIVE} not present')
class RealCifar10Test(absltest.TestCase):

  def test_cpu_preset_learns(self):
    root = self.create_tempdir().full_path
    # A tenth of the training set and of the test set keeps this quick.
    with tarfile.open(ARCHIVE) as tar:
      members = [m for m in tar.getmembers()
                 if m.isdir() or _index(m.name) < KEEP[m.name.split('/')[0]]]
      tar.extractall(root, members=members, filter='data')
    config = cifar10.get_config('cpu')
    config.data.name = 'folder'
    config.data.path = root
    config.train.steps = 40
    config.train.log_every = 20
    summary = train.train_and_evaluate(config,
                                       os.path.join(root, 'workdir'))
    # Chance is 10%; 40 steps of 8 learners reach well above it.
    self.assertGreater(summary["test_accuracy"], 0.2)
    self.assertLess(summary['final_train_loss'], 2.2)


if __name__ == '__main__':
  absltest.main()
