"""Every config key, declared once: its default, its meaning, its check.

Each `Key` also says whether it may change when a run resumes (`resumable`)
and whether a finished run's results stand whatever it says
(`keeps_results`). Everything else reads these declarations:
`configs/default.py` builds the config from them, `validate` checks a config
against them before any data, device or workdir is touched, checkpoints
fingerprint the keys that are not resumable, sweeps compare the keys that
change results, and the README's key table is tested against them.

Adding a key is one `Key(...)` line here plus the code that uses it.
`python -m hier_avg.config_keys` prints the whole schema.

Checks that need more than the config (the mesh against the devices, the
batch against the data) live where that knowledge is, and run before the
workdir is touched too.
"""

from collections.abc import Callable, Sequence
import ast
import dataclasses
import difflib
import math
import textwrap
from typing import Any

import ml_collections

from hier_avg import models
from hier_avg.kinds import is_integer, is_number
from hier_avg.core import compression
from hier_avg.core import fragments
from hier_avg.core import hierarchy
from hier_avg.core import membership
from hier_avg.core import optim
from hier_avg.core import outer
from hier_avg.core import periods
from hier_avg.core import policies
from hier_avg.core import schedule as schedule_lib
from hier_avg.core import state
from hier_avg.data import datasets
from hier_avg.data import feeds
from hier_avg.data import sampling
from hier_avg.data import streaming
from hier_avg.errors import UserError, require
from hier_avg.run import elastic
from hier_avg.runtime import execution
from hier_avg.tools import simulated_clock

# A check takes a key's name and value and returns the one-line message
# that says what is wrong, or None when the value is fine.
Check = Callable[[str, Any], str | None]


@dataclasses.dataclass(frozen=True)
class Key:
  name: str            # 'section.key', or 'key' at the top level.
  default: Any
  doc: str
  check: Check
  # May differ between a run and its resumption: it changes how long, how
  # often or where the run goes, not what the learners compute.
  resumable: bool = False
  # A finished run's results stand whatever it says (where the data lives,
  # how learners sit on devices, how often the run logs or saves).
  keeps_results: bool = False
  # Counts epochs (a number or a tuple of them): the run turns it into
  # steps once the data set is known (`check_epochs`).
  in_epochs: bool = False


# The largest count a key may hold: the step counter and array sizes are
# int32, and a larger value would overflow them after validation.
MAX_COUNT = state.MAX_STEPS


def integer(minimum: int, maximum: int = MAX_COUNT) -> Check:
  def check(name, value):
    if not (is_integer(value) and minimum <= value <= maximum):
      return (f'{name}={value!r} must be an integer in [{minimum}, '
              f'{maximum}].')
  return check


def number(minimum: float, strict: bool = False) -> Check:
  def check(name, value):
    if not (is_number(value) and math.isfinite(value) and
            (value > minimum if strict else value >= minimum)):
      return (f'{name}={value!r} must be a finite number '
              f'{">" if strict else ">="} {minimum}.')
  return check


def fraction(name, value) -> str | None:
  """A momentum: a number in [0, 1)."""
  if not (is_number(value) and 0 <= value < 1):
    return f'{name}={value!r} must be a number in [0, 1).'


def share(name, value) -> str | None:
  """A part of a whole: a number in (0, 1]."""
  if not (is_number(value) and 0 < value <= 1):
    return f'{name}={value!r} must be a number in (0, 1].'


def boolean(name, value) -> str | None:
  if not isinstance(value, bool):
    return f'{name}={value!r} must be True or False.'


def text(name, value) -> str | None:
  if not isinstance(value, str):
    return f'{name}={value!r} must be a string.'


def numbers_tuple(name, value) -> str | None:
  if not (isinstance(value, (tuple, list)) and
          all(is_number(v) and math.isfinite(v) for v in value)):
    return (f'{name}={value!r} must be a tuple of finite numbers, e.g. '
            '(30, 60).')


def level_pairs(name, value) -> str | None:
  """Pairs of integers >= 1: (group size, period) per level."""
  if not (isinstance(value, (tuple, list)) and all(
      isinstance(pair, (tuple, list)) and len(pair) == 2 and
      all(is_integer(x) and x >= 1 for x in pair) for pair in value)):
    return (f'{name}={value!r} must be (group size, period) pairs of '
            'integers >= 1, innermost first, e.g. ((2, 2), (8, 8)).')


def integers_tuple(minimum: int) -> Check:
  def check(name, value):
    if not (isinstance(value, (tuple, list)) and
            all(is_integer(x) and x >= minimum for x in value)):
      return (f'{name}={value!r} must be a tuple of integers >= {minimum}, '
              'e.g. (2, 4).')
  return check


def choices_tuple(*choices) -> Check:
  def check(name, value):
    if not (isinstance(value, (tuple, list)) and
            all(v in choices for v in value)):
      return (f'{name}={value!r} must be a tuple of '
              f'{", ".join(map(repr, choices))}, one per level, e.g. '
              f'{tuple(choices[:2])!r}.')
  return check


def unit_numbers_tuple(name, value) -> str | None:
  if not (isinstance(value, (tuple, list)) and
          all(is_number(v) and 0 <= v <= 1 for v in value)):
    return (f'{name}={value!r} must be a tuple of numbers in [0, 1], one '
            'per level, e.g. (0.0, 0.5).')


def booleans_tuple(name, value) -> str | None:
  if not (isinstance(value, (tuple, list)) and
          all(isinstance(v, bool) for v in value)):
    return (f'{name}={value!r} must be a tuple of booleans, one per level, '
            'e.g. (False, True).')


def outages_check(name, value) -> str | None:
  try:
    membership.parse_outages(value)
  except (TypeError, ValueError) as e:
    return f'{name}={value!r}: {e}; give a tuple of such triples.'
  return None


def power_of_two(name, value) -> str | None:
  if not (is_integer(value) and value >= 1 and value & (value - 1) == 0):
    return f'{name}={value!r} must be a power of two (1, 2, 4, 8, ...).'


def one_of(*choices) -> Check:
  def check(name, value):
    if value not in choices:
      return (f'unknown {name}={value!r}; choose one of '
              f'{", ".join(map(repr, choices))}.')
  return check


def registered(registry: dict) -> Check:
  """One of `registry`'s names, read when checked (models added later
  count)."""
  def check(name, value):
    return one_of(*sorted(registry))(name, value)
  return check


def devices(name, value) -> str | None:
  if not (is_integer(value) and (value == -1 or value >= 1)):
    return f'{name}={value!r} must be -1 (as many as fit) or an integer >= 1.'


SECTIONS = {
    '': 'Run-wide.',
    'hier': 'The algorithm: learners, groups, periods, averaging policies.',
    'model': 'The network and its arithmetic.',
    'data': 'The data set, its batches and its augmentation.',
    'opt': 'Each learner\'s optimizer (SGD) and learning-rate schedule.',
    'train': 'Length, evaluation, logging and checkpoint cadence.',
    'mesh': 'How the learner grid is laid onto devices.',
    'faults': 'Simulated failures: learners that are down for a while, and '
              'how the hierarchy averages and heals without them.',
    'runtime': 'How rounds are compiled: the same results (to float32 '
               'rounding), other speed.',
    'run': 'Multi-process runs: what a run does when it loses a process.',
}

KEYS = (
    Key('seed', 0, 'Seeds model init, data order and augmentation.',
        # jax's key keeps 32 bits (no x64): larger seeds repeat smaller ones.
        integer(0, 2**32 - 1)),
    # hier
    Key('hier.num_learners', 8, 'P: model replicas.', integer(1)),
    Key('hier.group_size', 4, 'S: learners per node, averaged locally.',
        integer(1)),
    Key('hier.k1', 4, 'K1: local steps between local averagings.',
        integer(1)),
    Key('hier.k2', 4, 'K2: local averagings between global averagings.',
        integer(1)),
    Key('hier.levels', (),
        'Any number of levels: (group size, period) pairs, innermost first, '
        'e.g. ((2, 2), (4, 8), (16, 32)): pairs average every 2 steps, '
        'groups of 4 every 8, all 16 every 32 (hier_avg/core/hierarchy.py). '
        'Empty: the two levels of group_size, k1 and k2, which it replaces.',
        level_pairs),
    Key('hier.sync_warmup_steps', 0,
        'W: steps 1..W are synchronous SGD, as post-local SGD starts (every '
        "gradient averaged over all learners, as DDP's all-reduce: models "
        'and optimizer states stay equal; each step counts as a global '
        "averaging); the levels' periods then count from W (torch's "
        'PeriodicModelAverager(warmup_steps=W) with its step counter '
        'started at 1).', integer(0)),
    Key('hier.period_schedule', 'constant',
        "Averaging periods over training (hier_avg/core/periods.py): "
        "'constant'; 'step' (all periods times period_factors[i] from "
        'epoch period_milestones[i] on); '
        "'adaptive' (AdaComm: at each outermost averaging the multiplier "
        'becomes ceil(sqrt(loss / first loss) * adaptive_base), clipped to '
        '[adaptive_min, adaptive_max], rounded down to a power of two). A '
        'change takes effect at an outermost averaging; periods then count '
        'from there.', one_of(*periods.PERIOD_SCHEDULES)),
    Key('hier.period_milestones', (),
        "Epochs at which 'step' multiplies every period...", numbers_tuple,
        in_epochs=True),
    Key('hier.period_factors', (),
        '...by these integers (one per milestone; the multiplier from it '
        'on, not cumulative).', integers_tuple(1)),
    Key('hier.adaptive_base', 4,
        "'adaptive': the periods' multiplier at start (a power of two).",
        power_of_two),
    Key('hier.adaptive_min', 1,
        "'adaptive': the smallest multiplier (a power of two).",
        power_of_two),
    Key('hier.adaptive_max', 8,
        "'adaptive': the largest multiplier (a power of two).", power_of_two),
    Key('hier.measure_drift', True,
        "At each averaging, the mean over learners of the squared distance "
        "of a learner's parameters from its group's mean, before averaging "
        '(consensus distance): <level>_drift in the metrics. Costs no '
        'communication.', boolean, resumable=True, keeps_results=True),
    Key('hier.measure_spread', False,
        'At each outermost averaging, also the mean squared distance of the '
        "next level's group means from the global mean: <level>_spread. "
        "One more all-reduce, over the inner level's axes.", boolean,
        resumable=True, keeps_results=True),
    Key('hier.compress', (),
        "Per level, innermost first (as hier.levels; two levels: (local, "
        "global)): how a learner's change since its group's last common "
        "model travels when that level averages: 'none' (float32 "
        "all-reduce, exactly today's averaging), 'bfloat16', 'int8' or "
        "'int4' (blockwise absmax, a float32 scale per 256 / 64 values; "
        'int4 packed two values a byte); compressed '
        'payloads are all-gathered and averaged in float32 '
        '(hier_avg/core/compression.py). Empty: none at every level.',
        choices_tuple(*compression.COMPRESSIONS)),
    Key('hier.error_feedback', (),
        'Per level: each learner keeps what compression lost at that '
        "level's averaging and sends it with the next one. Empty: off.",
        booleans_tuple),
    Key('hier.delay', (),
        'Per level, innermost first (as hier.compress): tau >= 0, the steps '
        "by which that level's averaging is late: the averaging after step "
        'H averages the parameters of step H - tau and each learner keeps '
        'its progress since, x_j <- mean(x_j,H-tau) + (x_j,H - x_j,H-tau); '
        'its collective runs during those tau steps. Each tau below its '
        "level's period; composes with compression and fragments. Only "
        'parameters are late (BatchNorm statistics and averaged optimizer '
        'state average at H); the warmup steps are never late. Empty: 0 '
        'everywhere.', integers_tuple(0)),
    Key('hier.delay_mix', (),
        "Per level: torchft's rule instead of keeping the progress, "
        'x_j <- (1 - alpha) mean(x_j,H-tau) + alpha x_j,H (alpha = 0 drops '
        "it, torchft's default); 0 for levels that are not late. Empty: "
        'keep the progress.', unit_numbers_tuple),
    Key('hier.fragments', (),
        'Per level, innermost first (as hier.compress): F >= 1, the '
        "fragments that level's parameters average in (streamed averaging, "
        'hier_avg/core/fragments.py): runs of whole leaves of about equal '
        'bytes, fragment f after step floor(T (f + 1) / F) of each period '
        "T (torchft's convention); other averaged parts go with the last. "
        'Each F at most its period; composes with hier.compress and '
        'hier.delay. Empty: 1 everywhere.', integers_tuple(1)),
    Key('hier.min_members', (),
        'Per level, innermost first (as hier.compress): the fewest members '
        'of a group that must be up for its averaging to happen; with '
        'fewer, the group skips it and its members keep their models '
        '(counted in <level>_skipped). Empty: 1 everywhere.',
        integers_tuple(1)),
    Key('hier.weighting', 'uniform',
        "With simulated outages, how a group weighs its members up: "
        "'uniform' (torchft: the plain mean over them) or 'samples' "
        '(hivemind, OpenDiLoCo: by the steps each took since the group\'s '
        'last averaging).', one_of(*membership.WEIGHTINGS)),
    Key('hier.period_unit', 'steps',
        "What the levels' periods count: 'steps' (every learner takes the "
        "same steps; the simulated clock waits for the slowest) or 'time' "
        '(a period lasts its steps of a learner of speed 1, '
        'faults.step_s each; each learner takes as many steps as its '
        'faults.speed fits, the fastest sets the steps of a period, the '
        'others wait out the rest; train.steps counts those).',
        one_of(*membership.PERIOD_UNITS)),
    Key('hier.algorithm', 'hier',
        "'hier': Hier-AVG (K-AVG and sync SGD as special cases); 'asgd': "
        'simulated asynchronous SGD (hier_avg/algorithms/asgd.py), whose '
        "learners' gradients reach the shared model `staleness` steps late; "
        'it ignores group_size, k1 and k2.', one_of('hier', 'asgd')),
    Key('hier.staleness', 1, "ASGD: steps a gradient takes to arrive.",
        integer(0)),
    Key('hier.batch_stats', 'average',
        "BatchNorm statistics at averaging: 'average', 'local', or "
        "'recompute' (from `recompute_batches` training batches before each "
        'evaluation).', one_of(*policies.BATCH_STATS_POLICIES)),
    Key('hier.opt_state', 'local',
        "Optimizer state at averaging: 'local', 'average' or 'reset' "
        '(moments zeroed).', one_of(*policies.OPT_STATE_POLICIES)),
    Key('hier.recompute_batches', 32,
        "Training batches that rebuild BatchNorm statistics "
        "(batch_stats='recompute').", integer(1), resumable=True),
    Key('hier.outer_lr', 1.0,
        'Outer optimizer at global averaging (SlowMo / DiLoCo): SGD on the '
        'pseudo-gradient (previous global model - new average); 1 and no '
        'momentum is plain Hier-AVG.', number(0, strict=True)),
    Key('hier.outer_lr_schedule', 'constant',
        "The outer lr over the run's outer steps (outermost averagings, "
        "hier_avg/core/outer.py): 'constant' or 'cosine' (from outer_lr "
        'to outer_lr_final over the outer steps after the warmup; not with '
        "period_schedule='adaptive', whose outer steps are not known in "
        "advance). Counted by the outer optimizer's own step count, which "
        'every checkpoint keeps, so a resumed run continues the curve '
        'exactly.', one_of(*outer.OUTER_LR_SCHEDULES)),
    Key('hier.outer_warmup', 0,
        'Outer steps of linear outer-lr warmup: step n of W uses '
        'outer_lr * n / W; then the schedule.', integer(0)),
    Key('hier.outer_lr_final', 0.0,
        "'cosine': the outer lr it decays to, reached one outer step after "
        "the run's last.", number(0)),
    Key('hier.outer_momentum', 0.0, 'Momentum of the outer optimizer.',
        fraction),
    Key('hier.outer_nesterov', False, 'Nesterov outer momentum.', boolean),
    # model
    Key('model.name', 'resnet18', 'See hier_avg.models.MODELS.',
        registered(models.MODELS)),
    Key('model.dtype', 'float32',
        "'bfloat16' computes in bf16; parameters, optimizer state, the loss "
        'and all averaging stay float32.', one_of(*models.DTYPES)),
    Key('model.conv', 'auto',
        "Convolution kernel: 'xla', 'im2col' (im2col + matmul; fast for "
        "vmapped learners) or 'auto' (im2col when vmapped learners share a "
        "device and its patches fit half the device's memory).", one_of(*execution.CONV_CHOICES), resumable=True,
        keeps_results=True),
    Key('model.stem', 'cifar',
        "ResNet stem: 'cifar' (3x3 stride 1) for 32x32 images, or "
        "'imagenet' (7x7 stride 2 and a 3x3 stride-2 max-pool) for 224x224.",
        one_of(*models.STEMS)),
    # data
    Key('data.name', 'cifar10',
        "A tfds name held in memory ('cifar10', ...), 'imagenet2012' "
        '(streamed from tfds by every host: hier_avg/data/streaming.py), '
        "'folder' or 'synthetic'.",
        one_of(*datasets.TFDS_NAMES, *streaming.STREAMED_NAMES, 'folder',
               'synthetic')),
    Key('data.path', '', 'Folder root, or the tfds data_dir.', text,
        resumable=True, keeps_results=True),
    Key('data.batch_size', 128, 'B: examples per learner per step.',
        integer(1)),
    Key('data.sampling', 'partition',
        "'partition' (each learner its own shard) or 'iid'.",
        one_of(*sampling.SAMPLING_MODES)),
    Key('data.augment', True,
        'Random crop + horizontal flip: pad-4 crops on device for data sets '
        'in memory; Inception-style random-resized crops on the host for '
        'streamed ones.', boolean),
    Key('data.placement', 'auto',
        "Where a data set held in memory lives: 'device' (whole on every "
        "device; rounds carry indices), 'host' (in host memory; each round's "
        "minibatches are gathered there and shipped) or 'auto' (device when "
        'it fits device_memory_fraction, else host). The same results either '
        'way, to float32 rounding.',
        one_of(*feeds.PLACEMENTS), resumable=True, keeps_results=True),
    Key('data.device_memory_fraction', 0.25,
        "placement='auto': the share of each device's memory the training "
        'set may take (on CPU, where devices share host RAM, of the '
        "host's memory divided among its devices).", share, resumable=True,
        keeps_results=True),
    Key('data.image_size', 224,
        'Streamed data sets: the square size images are cropped and resized '
        'to (evaluation: a centre crop of image_size / (image_size + 32)).',
        integer(1)),
    Key('data.synthetic_train_examples', 4096,
        'Synthetic data (class-dependent patterns plus noise): training '
        'examples.', integer(1)),
    Key('data.synthetic_test_examples', 1024, 'Synthetic test examples.',
        integer(1)),
    Key('data.synthetic_image_size', 32, 'Synthetic image side.',
        integer(1)),
    Key('data.synthetic_num_classes', 10, 'Synthetic classes.', integer(2)),
    # opt
    Key('opt.lr', 0.1, 'Peak learning rate.', number(0, strict=True)),
    Key('opt.momentum', 0.9, 'SGD momentum.', fraction),
    Key('opt.nesterov', False, 'Nesterov momentum (needs momentum > 0).',
        boolean),
    Key('opt.weight_decay', 5e-4,
        'Coupled L2 (added to the gradient before momentum, as '
        'torch.optim.SGD).', number(0)),
    Key('opt.schedule', 'cosine', "'constant', 'step' or 'cosine'.",
        one_of(*optim.SCHEDULES)),
    Key('opt.horizon_steps', 0,
        "Steps 'cosine' decays over, then holds at 0; 0: the run's length. "
        'A run resumed with another length must set it (to keep its curve, '
        'the old length).', integer(0), resumable=True),
    Key('opt.warmup_epochs', 0.0,
        'Linear warmup from 0, before the schedule.', number(0),
        in_epochs=True),
    Key('opt.milestones', (50, 75),
        "Epochs at which 'step' multiplies the lr...", numbers_tuple,
        in_epochs=True),
    Key('opt.decay_factor', 0.1, '...by this factor.', number(0)),
    # faults
    Key('faults.outages', (),
        'Simulated outages, (learner, first_step, last_step) each: the '
        'learner (grid id, 0..P-1) takes no step from first_step to '
        'last_step inclusive (1-based) and is left out of every averaging '
        'after one of them; groups average over their members up '
        '(hier_avg/core/membership.py). Empty: none.', outages_check),
    Key('faults.node_mtbf_steps', 0.0,
        'Mean up steps between failures of each node (the groups one level '
        'inside the outermost; single learners for one level), drawn from '
        'an exponential with faults.seed; 0: none. Each failure takes the '
        'node down for faults.node_downtime_steps; the drawn outages are '
        'logged and in summary.json. A failure that would leave no learner '
        'up is not drawn.', number(0)),
    Key('faults.node_downtime_steps', 0,
        'Steps a failed node stays down (0: no drawn failures).',
        integer(0)),
    Key('faults.seed', 0, 'Seed of the drawn node failures.', integer(0)),
    Key('faults.speed', 'equal',
        "Each learner's compute time per step, fixed for the run: 'equal' "
        "(faults.step_s each), 'lognormal' (faults.step_s times exp of a "
        'normal of sigma faults.speed_sigma, drawn with faults.seed) or a '
        'file of one step time (seconds) per learner, one per line. With '
        'outages, unequal speeds or faults.link_gbps, the metrics get the '
        'simulated clock '
        '(simulated_seconds, goodput; hier_avg/tools/simulated_clock.py).',
        text),
    Key('faults.speed_sigma', 0.5, "Sigma of 'lognormal' speeds.",
        number(0)),
    Key('faults.step_s', 1.0, 'Simulated compute seconds per step of a '
        'learner of speed 1.', number(0, strict=True)),
    Key('faults.link_gbps', (),
        'Per level, innermost first: the link (Gb/s) its averagings cross '
        'in the simulated clock, a ring all-reduce of the model among the '
        'group; empty: averagings take no time.', numbers_tuple),
    Key('faults.link_latency_us', 5.0, 'Latency per message of those '
        'links (microseconds).', number(0)),
    Key('faults.heal', 'nearest',
        "A learner coming back: 'nearest' takes the current mean of its "
        'innermost group with a learner up (or the next level out), with '
        "the parts hier.opt_state/batch_stats average; 'stale' keeps its "
        'old model.', one_of(*membership.HEALS)),
    # train
    Key('train.epochs', 100.0, 'Length in epochs (when steps is 0).',
        number(0), resumable=True, in_epochs=True),
    Key('train.steps', 0, 'Local steps per learner; 0: use epochs.',
        integer(0), resumable=True),
    Key('train.eval_every', 0,
        'Steps between evaluations; 0: at the end only.', integer(0),
        resumable=True),
    Key('train.log_every', 64, 'Steps between training-metric rows.',
        integer(1), resumable=True, keeps_results=True),
    Key('train.eval_batch_size', 1000, 'Examples per evaluation batch.',
        integer(1), resumable=True, keeps_results=True),
    Key('train.checkpoint_every', 1024,
        'Steps between checkpoints (0: only at the end and when stopped by '
        'SIGTERM/SIGINT).', integer(0), resumable=True, keeps_results=True),
    Key('train.keep_checkpoints', 3, 'The newest checkpoints kept.',
        integer(1), resumable=True, keeps_results=True),
    # mesh
    Key('mesh.node_devices', -1,
        "Devices along 'node'; -1: as many as fit.", devices,
        resumable=True, keeps_results=True),
    Key('mesh.local_devices', -1,
        "Devices along 'local'; -1: as many as fit.", devices,
        resumable=True, keeps_results=True),
    # runtime
    Key('runtime.learner_loop', 'auto',
        "How one device runs its block of learners: 'vmap', 'unroll' "
        "(separate per-learner programs) or 'auto' (unroll on CPU, vmap "
        'elsewhere).', one_of(*execution.LEARNER_LOOPS), resumable=True,
        keeps_results=True),
    Key('runtime.step_loop', 'auto',
        "How a round's local steps are compiled into one call: 'scan' "
        "(lax.scan), 'unroll' (straight-line code; XLA:CPU runs it much "
        "faster) or 'auto' (unroll on CPU, scan elsewhere).",
        one_of(*execution.STEP_LOOPS), resumable=True, keeps_results=True),
    Key('runtime.max_unrolled_steps', 16,
        'Unrolled rounds are split into calls of at most this many '
        'learner-steps per device, which bounds compile time (cnn_small on '
        'CPU: 16 steps 8 s, 64 steps 46 s).', integer(1), resumable=True,
        keeps_results=True),
    Key('runtime.compilation_cache', 'auto',
        "Folder of JAX's persistent compilation cache, so reruns, resumes "
        "and sweep points load the programs they compiled before: 'auto' "
        '($JAX_COMPILATION_CACHE_DIR, else ~/.cache/hier_avg/jax), a path, '
        "or 'off'.", text, resumable=True, keeps_results=True),
    Key('run.watchdog_factor', 10.0,
        'Multi-process runs: a round that takes more than this many times '
        'the shortest of its kind so far (and at least run.watchdog_min_s) '
        'ends the process with exit code 4, as a peer that died inside a '
        'collective leaves the others waiting (hier_avg/run/watchdog.py); '
        '0: off.', number(0), resumable=True, keeps_results=True),
    Key('run.watchdog_min_s', 60.0,
        'The least bound of a round (seconds).', number(0, strict=True),
        resumable=True, keeps_results=True),
    Key('run.elastic', False,
        'Multi-process runs: when a process dies, the others leave its '
        'learners out and train on (hier_avg/run/elastic.py; README, "When '
        'a host fails"); False: the others exit with code 4 for a restart.',
        boolean, resumable=True, keeps_results=True),
    Key('run.heartbeat_s', 60,
        'Multi-process runs: seconds of silence after which a process is '
        'taken for dead (the time an elastic run takes to notice a loss).',
        integer(1, 3600), resumable=True, keeps_results=True),
    Key('run.watchdog_first_s', 900.0,
        'The bound of the first round of each kind, which compiles its '
        'program (seconds).', number(0, strict=True), resumable=True,
        keeps_results=True),
)

BY_NAME = {key.name: key for key in KEYS}

# Keys that were renamed, so that an old spelling gets pointed to the new.
RENAMED = {
    'mesh.pack': 'runtime.learner_loop',
    'mesh.round_loop': 'runtime.step_loop',
    'mesh.max_unrolled_steps': 'runtime.max_unrolled_steps',
}


def _asgd_relations(hier) -> None:
  """`hier.algorithm='asgd'`: one shared model, nothing averaged."""
  require(not hier.levels and not hier.sync_warmup_steps and
          hier.period_schedule == 'constant' and not hier.compress,
          "hier.algorithm='asgd' has one shared model and no averaging "
          'levels; leave hier.levels and hier.compress empty, '
          "hier.sync_warmup_steps 0 and hier.period_schedule 'constant'.")
  # One shared model and optimizer: no averaging for these to act on.
  require(hier.outer_lr == 1 and hier.outer_momentum == 0 and
          hier.outer_lr_schedule == 'constant' and not hier.outer_warmup,
          "hier.algorithm='asgd' has no global averaging for an outer "
          'optimizer; leave hier.outer_lr=1, hier.outer_momentum=0, '
          "hier.outer_lr_schedule='constant' and hier.outer_warmup=0.")
  require(hier.opt_state == 'local',
          "hier.algorithm='asgd' keeps one shared optimizer state; "
          f'hier.opt_state={hier.opt_state!r} applies to Hier-AVG only: '
          "leave it 'local'.")
  require(hier.batch_stats != 'local',
          "hier.algorithm='asgd' shares one model and its BatchNorm "
          "statistics; hier.batch_stats='local' applies to Hier-AVG only.")


def _relations(config) -> None:
  """Checks that read more than one key."""
  hier = config.hier
  require(not hier.outer_nesterov or hier.outer_momentum > 0,
          'hier.outer_nesterov=True needs hier.outer_momentum > 0.')
  require(hier.outer_lr_schedule != 'cosine' or
          hier.period_schedule != 'adaptive',
          "hier.outer_lr_schedule='cosine' needs the run's number of outer "
          "steps, which hier.period_schedule='adaptive' decides during "
          "training; use hier.outer_lr_schedule='constant' or a 'constant' "
          "or 'step' hier.period_schedule.")
  if hier.levels:
    hierarchy.Hierarchy.from_config(hier)  # Raises on a broken rule.
  else:
    require(hier.num_learners % hier.group_size == 0,
            f'hier.num_learners={hier.num_learners} is not divisible by '
            f'hier.group_size={hier.group_size}; choose S that divides P.')
  depth = len(hier.levels) if hier.levels else 2
  problems = compression.check_levels(hier.compress, hier.error_feedback,
                                      depth)
  require(not problems, problems[0] if problems else '')
  if hier.delay or hier.delay_mix:
    require(hier.algorithm == 'hier',
            f"hier.algorithm={hier.algorithm!r} has no averaging levels to "
            'delay; leave hier.delay and hier.delay_mix empty.')
    problems = schedule_lib.check_delays(
        hier.delay, hier.delay_mix,
        hierarchy.Hierarchy.from_config(hier).periods, hier.fragments,
        (periods.powers_of_two(hier.adaptive_min, hier.adaptive_max)[0]
         if hier.period_schedule == 'adaptive' else None))
    require(not problems, problems[0] if problems else '')
  if hier.fragments:
    require(hier.algorithm == 'hier',
            f"hier.algorithm={hier.algorithm!r} has no averaging levels to "
            'fragment; leave hier.fragments empty.')
    problems = fragments.check(
        hier.fragments, hierarchy.Hierarchy.from_config(hier).periods)
    require(not problems, problems[0] if problems else '')
  milestones = tuple(hier.period_milestones)
  require(len(milestones) == len(hier.period_factors),
          f'hier.period_milestones={milestones} and hier.period_factors='
          f'{tuple(hier.period_factors)} must have one factor per milestone.')
  require(all(m >= 0 for m in milestones) and
          all(a < b for a, b in zip(milestones, milestones[1:])),
          f'hier.period_milestones={milestones} must be increasing epochs '
          '>= 0.')
  require(hier.adaptive_min <= hier.adaptive_base <= hier.adaptive_max,
          f'hier.adaptive_base={hier.adaptive_base} must lie in '
          f'[hier.adaptive_min, hier.adaptive_max] = [{hier.adaptive_min}, '
          f'{hier.adaptive_max}].')
  if hier.algorithm == 'asgd':
    _asgd_relations(hier)
  problems = (membership.check(config.faults, hier) +
              simulated_clock.check(config.faults, hier) +
              elastic.check(config))
  require(not problems, problems[0] if problems else '')
  model = config.model
  require(model.stem == 'cifar' or model.name in models.STEM_MODELS,
          f'model.stem={model.stem!r} applies to '
          f'{", ".join(models.STEM_MODELS)} only; leave it \'cifar\' for '
          f'model.name={model.name!r}.')
  data = config.data
  if data.name in streaming.STREAMED_NAMES:
    require(data.sampling == 'partition',
            f'data.sampling={data.sampling!r} needs random access, but '
            f"{data.name} is streamed; use data.sampling='partition'.")
  require(not config.opt.nesterov or config.opt.momentum > 0,
          'opt.nesterov=True needs opt.momentum > 0.')
  require(config.train.steps > 0 or config.train.epochs > 0,
          'set train.steps or train.epochs to a value > 0.')


def get(config, name: str):
  node = config
  for part in name.split('.'):
    node = node[part]
  return node


def flatten(config) -> dict[str, Any]:
  """Every leaf of `config` by its 'section.key' name."""
  flat = {}

  def visit(prefix, node):
    for name, value in node.items():
      if hasattr(value, 'items'):
        visit(f'{prefix}{name}.', value)
      else:
        flat[prefix + name] = value

  visit('', config)
  return flat


def defaults() -> ml_collections.ConfigDict:
  """A config holding every key at its default."""
  config = ml_collections.ConfigDict()
  for key in KEYS:
    section, _, name = key.name.rpartition('.')
    node = config
    if section:
      if section not in config:
        config[section] = ml_collections.ConfigDict()
      node = config[section]
    node[name] = key.default
  return config


def require_known(name: str) -> Key:
  """The key called `name`; UserError naming the closest keys if none is."""
  require(name not in RENAMED,
          f'{name} is now called {RENAMED.get(name)}; set that instead.')
  if name not in BY_NAME:
    close = difflib.get_close_matches(name, BY_NAME, n=3, cutoff=0.6)
    hint = f'; did you mean {" or ".join(close)}?' if close else '.'
    require(False, f'{name} is not a config key{hint} '
            '(`python -m hier_avg.config_keys` lists them all)')
  return BY_NAME[name]


def parse(name: str, text: str):
  """A value for key `name` written as text, read as its default's type.

  'true'/'false' (any case) for booleans, Python literals for tuples, so a
  value given on a command line means what the config means.
  """
  default = require_known(name).default
  try:
    if isinstance(default, bool):
      value = {'true': True, 'false': False}[text.strip().lower()]
    elif isinstance(default, (int, float)):
      value = ast.literal_eval(text.strip())
      require(is_number(value), '')
      value = float(value) if isinstance(default, float) else value
    elif isinstance(default, tuple):
      value = ast.literal_eval(text.strip())
      value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    else:
      value = text
  except (KeyError, ValueError, SyntaxError, UserError):
    raise UserError(f'{name}={text!r} is not a {type(default).__name__} '
                    f'like its default {default!r}.') from None
  return value


def validate(config) -> None:
  """Raises UserError for the first key that is unknown, missing or bad."""
  flat = flatten(config)
  for name in flat:
    require_known(name)
  for key in KEYS:
    require(key.name in flat, f'the config has no {key.name}; build it from '
            'configs/default.py (default.get_config()).')
    problem = key.check(key.name, flat[key.name])
    require(problem is None, problem)
  _relations(config)


def check_epochs(config, steps_per_epoch: float) -> None:
  """Refuses an epoch count whose steps overflow the step counter.

  Checked once the data set says how many steps an epoch has, before
  anything turns epochs into steps.
  """
  for key in KEYS:
    if not key.in_epochs:
      continue
    value = get(config, key.name)
    for epochs in value if isinstance(value, (tuple, list)) else (value,):
      require(epochs * steps_per_epoch <= MAX_COUNT,
              f'{key.name}={value!r} is {epochs * steps_per_epoch:.3g} steps '
              f'at {steps_per_epoch:g} steps an epoch, past the most a run '
              f'counts ({MAX_COUNT}); lower it.')


def fingerprint(config) -> dict[str, Any]:
  """The values a resumed run must share (tuples as lists, as JSON has)."""
  return {key.name: as_json(get(config, key.name))
          for key in KEYS if not key.resumable}


def as_json(value):
  """Tuples (nested too) as the lists JSON gives back."""
  if isinstance(value, (tuple, list)):
    return [as_json(x) for x in value]
  return value


def changes_results(name: str) -> bool:
  """Whether two runs that differ in `name` may end with other results."""
  return name not in BY_NAME or not BY_NAME[name].keeps_results


def names(where: Callable[[Key], bool] = lambda key: True) -> Sequence[str]:
  return tuple(key.name for key in KEYS if where(key))


def describe() -> str:
  """The schema as text: one line per key, grouped by section."""
  lines = []
  for section, doc in SECTIONS.items():
    lines.append(f'[{section or "top level"}] {doc}')
    for key in KEYS:
      if key.name.rpartition('.')[0] != section:
        continue
      flags = ', '.join(flag for flag, on in (
          ('may change on resume', key.resumable),
          ('keeps results', key.keeps_results)) if on)
      lines.append(f'  {key.name} = {key.default!r}'
                   f'{f"  ({flags})" if flags else ""}')
      lines.extend(textwrap.wrap(key.doc, 76, initial_indent=' ' * 6,
                                 subsequent_indent=' ' * 6))
  return '\n'.join(lines)


if __name__ == '__main__':
  print(describe())
