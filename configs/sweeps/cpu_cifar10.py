"""What every CPU study on the real CIFAR-10 shares (docs/reproduction.md).

The `:cpu` preset of configs/cifar10.py (cnn_small, P = 8 learners, B = 32
each, SGD lr 0.05, momentum 0.9, constant lr, no augmentation) on an image
folder (`{train,test}/<class>/*.jpg`, given by `--set=data.path=...`), for
a length in epochs, all learners packed on one device (no fake devices).
"""

CONFIG = 'configs/cifar10.py:cpu'


def overrides(epochs: float, eval_every: int) -> dict:
  """The sweep overrides of a study `epochs` long, evaluating every
  `eval_every` steps (0: at the end only)."""
  return {
      'data.name': 'folder',
      'train.steps': 0,
      'train.epochs': epochs,
      'train.eval_every': eval_every,
      'train.log_every': 14,
      'mesh.node_devices': 1,
      'mesh.local_devices': 1,
  }
