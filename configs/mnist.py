r"""MNIST / Fashion-MNIST with cnn_small-sized models and Hier-AVG.

  python launch.py --config=configs/mnist.py --workdir=/tmp/mnist
  python launch.py --config=configs/mnist.py:fashion_mnist --workdir=/tmp/fm

Needs tensorflow-datasets (and TensorFlow) for the download; or point
data.name='folder' at `root/{train,test}/<digit>/*.png`.
"""

from configs import default


def get_config(arg=None):
  c = default.get_config()
  c.data.name = arg or 'mnist'
  if c.data.name not in ('mnist', 'fashion_mnist'):
    raise ValueError(f"unknown preset {arg!r}; use 'mnist' or 'fashion_mnist'")
  c.model.name = 'cnn_small'
  c.hier.num_learners, c.hier.group_size = 8, 4
  c.hier.k1, c.hier.k2 = 4, 4
  c.data.batch_size = 32
  c.data.augment = False  # Crops and flips do not suit digits.
  c.opt.lr = 0.05
  c.opt.weight_decay = 0.0
  c.opt.schedule = 'cosine'
  c.train.epochs = 5.0
  c.train.eval_every = 512
  return c
