r"""CIFAR-10: ResNet-18 with Hier-AVG, and presets for K-AVG, sync SGD, CPU.

  python launch.py --config=configs/cifar10.py --workdir=/tmp/hier
  python launch.py --config=configs/cifar10.py:kavg --workdir=/tmp/kavg
  python launch.py --config=configs/cifar10.py:sync --workdir=/tmp/sync
  python launch.py --config=configs/cifar10.py:cpu --workdir=/tmp/cpu \
      --config.data.name=folder --config.data.path=/path/to/cifar10

Defaults (Hier-AVG): P = 8 learners in 2 groups of S = 4, local averaging
every K1 = 4 steps, global every K2 = 4 local averagings (every 16 steps).
Each learner uses B = 128 (global batch 1024) with SGD lr 0.1, momentum 0.9,
coupled weight decay 5e-4 and a cosine schedule after 2 warmup epochs: the
standard CIFAR ResNet recipe at B = 128 per learner, since between averagings
each learner is a plain B = 128 SGD run. 100 epochs.
"""

from configs import default

PRESETS = default.ALGORITHM_PRESETS + ('cpu',)


def get_config(arg=None):
  c = default.get_config()
  c.data.name = 'cifar10'
  c.model.name = 'resnet18'
  c.opt.warmup_epochs = 2.0
  c.train.eval_every = 512
  if default.apply_preset(c, arg, PRESETS) == 'cpu':
    # A laptop-sized run: cnn_small, no augmentation, 400 steps.
    c.model.name = 'cnn_small'
    c.data.batch_size = 32
    c.data.augment = False
    c.opt.lr = 0.05
    c.opt.weight_decay = 0.0
    c.opt.schedule = 'constant'
    c.opt.warmup_epochs = 0.0
    c.train.steps = 400
    c.train.eval_every = 100
    c.train.log_every = 20
  return c
