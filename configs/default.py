r"""Every config key hier_avg reads, with its default (the config is the schema).

The other files in configs/ start from this one and override what they need.
Launch any of them as

  python launch.py --config=configs/cifar10.py --workdir=/tmp/run \
      --config.hier.k1=8 --config.opt.lr=0.05
"""

import ml_collections


# The algorithm presets every data set's config offers (`:kavg`, `:sync`).
ALGORITHM_PRESETS = ('', 'kavg', 'sync')


def apply_preset(c, arg, presets=ALGORITHM_PRESETS):
  """Checks `arg` against `presets` and applies 'kavg' or 'sync' to `c`.

  '' keeps Hier-AVG as configured; presets of the caller's own are left to
  it. Returns `arg` ('' for None).
  """
  arg = arg or ''
  if arg not in presets:
    raise ValueError(f'unknown preset {arg!r}; choose one of {presets}')
  if arg == 'kavg':
    # K-AVG (local SGD): one level, every learner averages every K steps.
    c.hier.group_size = 1
    c.hier.k1, c.hier.k2 = 16, 1
  elif arg == 'sync':
    # Synchronous SGD: averaging after every step == gradient all-reduce.
    c.hier.k1, c.hier.k2 = 1, 1
  return arg


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.hier = ml_collections.ConfigDict()
  c.hier.num_learners = 8   # P: model replicas.
  c.hier.group_size = 4     # S: learners per node, averaged locally.
  c.hier.k1 = 4             # Local steps between local averagings.
  c.hier.k2 = 4             # Local averagings between global averagings.
  # 'hier': Hier-AVG (K-AVG and sync SGD as special cases); 'asgd':
  # simulated asynchronous SGD (hier_avg/algorithms/asgd.py), whose learners' gradients
  # reach the shared model `staleness` steps late; it ignores group_size,
  # k1 and k2.
  c.hier.algorithm = 'hier'
  c.hier.staleness = 1
  # State that is not a parameter, at averaging (hier_avg/core/policies.py):
  # BatchNorm statistics 'average' | 'local' | 'recompute' (from
  # `recompute_batches` training batches before each evaluation);
  # optimizer state 'local' | 'average' | 'reset' (moments zeroed).
  c.hier.batch_stats = 'average'
  c.hier.opt_state = 'local'
  c.hier.recompute_batches = 32
  # Outer optimizer at global averaging (SlowMo / DiLoCo): SGD on the
  # pseudo-gradient (previous global model - new average). lr 1 and no
  # momentum: plain Hier-AVG.
  c.hier.outer_lr = 1.0
  c.hier.outer_momentum = 0.0
  c.hier.outer_nesterov = False

  c.model = ml_collections.ConfigDict()
  c.model.name = 'resnet18'  # See hier_avg.models.MODELS.
  # Mixed precision: 'bfloat16' computes in bf16; parameters, optimizer
  # state, the loss and all averaging stay float32.
  c.model.dtype = 'float32'
  # Convolution kernel: 'xla', 'im2col' (im2col + matmul; fast for vmapped
  # learners) or 'auto' (im2col when vmapped learners share a device).
  c.model.conv = 'auto'
  # ResNet stem: 'cifar' (3x3 stride 1) for 32x32 images, or 'imagenet'
  # (7x7 stride 2 and a 3x3 stride-2 max-pool) for 224x224.
  c.model.stem = 'cifar'

  c.data = ml_collections.ConfigDict()
  # A tfds name held in memory ('cifar10', ...), 'imagenet2012' (streamed
  # from tfds by every host: hier_avg/data/streaming.py), 'folder' or
  # 'synthetic'.
  c.data.name = 'cifar10'
  c.data.path = ''            # Folder root, or the tfds data_dir.
  c.data.batch_size = 128     # Per learner (B).
  c.data.sampling = 'partition'  # 'partition' or 'iid'.
  # Random crop + horizontal flip: pad-4 crops on device for data sets in
  # memory; Inception-style random-resized crops on the host for streamed
  # ones.
  c.data.augment = True
  # Streamed data sets: the square size images are cropped and resized to
  # (evaluation: a centre crop of image_size / (image_size + 32)).
  c.data.image_size = 224
  # Synthetic data: class-dependent patterns plus noise (learnable).
  c.data.synthetic_train_examples = 4096
  c.data.synthetic_test_examples = 1024
  c.data.synthetic_image_size = 32
  c.data.synthetic_num_classes = 10

  c.opt = ml_collections.ConfigDict()
  c.opt.lr = 0.1
  c.opt.momentum = 0.9
  c.opt.nesterov = False
  # Coupled L2 (added to the gradient before momentum, as torch.optim.SGD).
  c.opt.weight_decay = 5e-4
  c.opt.schedule = 'cosine'   # 'constant', 'step' or 'cosine'.
  c.opt.warmup_epochs = 0.0   # Linear warmup from 0, before the schedule.
  c.opt.milestones = (50, 75)  # Epochs at which 'step' multiplies the lr...
  c.opt.decay_factor = 0.1     # ...by this factor.

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 100.0
  c.train.steps = 0           # Local steps per learner; 0: use epochs.
  c.train.eval_every = 0      # Steps between evaluations; 0: at the end only.
  c.train.log_every = 50      # Steps between training-metric rows.
  c.train.eval_batch_size = 1000
  # Steps between checkpoints (0: only at the end and when stopped by
  # SIGTERM/SIGINT); the last `keep_checkpoints` are kept.
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3

  c.mesh = ml_collections.ConfigDict()
  c.mesh.node_devices = -1    # Devices along 'node'; -1: as many as fit.
  c.mesh.local_devices = -1   # Devices along 'local'; -1: as many as fit.
  # How a round's local steps are compiled into one call: 'scan' (lax.scan),
  # 'unroll' (straight-line code; XLA:CPU runs it much faster) or 'auto'
  # (unroll on CPU, scan elsewhere).
  c.mesh.round_loop = 'auto'
  # Unrolled rounds are split into calls of at most this many steps, which
  # bounds compile time (cnn_small on CPU: 16 steps 8 s, 64 steps 46 s).
  c.mesh.max_unrolled_steps = 16
  # How one device runs its block of learners: 'vmap', 'unroll' (separate
  # per-learner programs) or 'auto' (unroll on CPU, vmap elsewhere).
  c.mesh.pack = 'auto'
  return c
