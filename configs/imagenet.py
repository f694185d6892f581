r"""ImageNet (ILSVRC 2012): ResNet-50 at 224x224 with Hier-AVG, streamed.

  python launch.py --config=configs/imagenet.py --workdir=/tmp/imagenet \
      --config.data.path=/path/to/tensorflow_datasets
  python launch.py --config=configs/imagenet.py:kavg --workdir=/tmp/in_kavg \
      --config.data.path=/path/to/tensorflow_datasets

The data set is tfds `imagenet2012`, which must be prepared once from the
archives downloaded by hand (image-net.org): put ILSVRC2012_img_train.tar
and ILSVRC2012_img_val.tar in DATA_DIR/downloads/manual/, run
`tfds build imagenet2012 --data_dir=DATA_DIR`, and pass DATA_DIR as
data.path. Every host then reads only its own share of the files
(hier_avg/data/streaming.py); the test set is the 50,000 validation images.

Defaults: P = 8 learners in 2 groups of S = 4, K1 = 4, K2 = 4; B = 128 per
learner (1,024 in all). The recipe is Goyal et al. (2017) as local-SGD
ImageNet studies use it (Lin et al. 2020): lr 0.1 per 256 images of the
global batch (0.4), 5 warmup epochs, momentum 0.9, weight decay 1e-4,
step decay by 10 at epochs 30, 60 and 80 of 90.
"""

from configs import default

def get_config(arg=None):
  c = default.get_config()
  c.data.name = 'imagenet2012'
  c.data.image_size = 224
  c.data.batch_size = 128
  c.model.name = 'resnet50'
  c.model.stem = 'imagenet'
  c.opt.lr = 0.4
  c.opt.momentum = 0.9
  c.opt.weight_decay = 1e-4
  c.opt.schedule = 'step'
  c.opt.milestones = (30, 60, 80)
  c.opt.decay_factor = 0.1
  c.opt.warmup_epochs = 5.0
  c.train.epochs = 90.0
  # ~1 epoch at P x B = 1,024 images per step.
  c.train.eval_every = 1248
  c.train.log_every = 100
  c.train.eval_batch_size = 1024
  c.train.checkpoint_every = 1248
  default.apply_preset(c, arg)
  return c
