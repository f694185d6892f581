r"""Packed learners on one accelerator: the GPU/TPU defaults, checked in one run.

  python benchmarks/accelerator.py            # one GPU or TPU, <= 5 minutes
  python benchmarks/accelerator.py --tiny     # CPU smoke run, well under 1 min

For each model (cnn_small and ResNet-18 on synthetic 32x32 images, compute in
bfloat16), on one device:

* one model at batch P*B, a minimal hand-written `jax.jit` train step
  (`common.hand_written_timing`): the baseline;
* P learners x B packed on the device (mesh 1x1), built by the library's own
  builder (`common.make_engine`) and run as `train.py` runs them, for every
  runtime.learner_loop (vmap, unroll) x model.conv (xla, im2col) with
  runtime.step_loop=scan, and the accelerator default (vmap, im2col) with
  runtime.step_loop=unroll too.

Each row reports training images/s (and the ratio to the one-model row),
the seconds the first call of each compiled program took beyond a steady
call (tracing + compiling: per round program for the engine, 'local x4' =
4 steps then a local averaging), and the device's peak memory
(`memory_stats()['peak_bytes_in_use']`; 'n/a' where the device has no
statistics, as on CPU). Every row runs in a fresh process, so its peak is
its own and a row that fails (out of memory, say) leaves the others.

Hier-AVG as `configs/cifar10.py` trains it (S = 4, K1 = K2 = 4, SGD with
momentum and weight decay) but without augmentation, so that packed and
one-model rows compute the same thing; the timed steps are whole global
periods (K1*K2 steps) after one period of warm-up, which compiles every
distinct round. Rows run cheapest first and none starts after --budget_s
seconds, so the whole run stays under 5 minutes; rows left out say so.
"""

import os

# One device: the packed rows use a 1x1 mesh. Set before `common` sets
# the fake CPU devices.
os.environ.setdefault('HIER_AVG_BENCH_DEVICES', '1')

import common  # pylint: disable=g-import-not-at-top,wrong-import-position

import json  # pylint: disable=g-import-not-at-top,wrong-import-order
import subprocess
import sys
import time

from absl import app
from absl import flags
import jax

from configs import cifar10
from hier_avg.data import datasets
from hier_avg.runtime import compilation_cache

_MODELS = flags.DEFINE_list('models', ['cnn_small', 'resnet18'],
                            'model.name of each model measured, cheapest '
                            'first.')
_LEARNERS = flags.DEFINE_integer('learners', 8, 'P: learners packed on the '
                                 'device.')
_BATCH = flags.DEFINE_integer('batch', 128, 'B: batch per learner (the one '
                              'model gets P*B).')
_GROUP = flags.DEFINE_integer('group_size', 4, 'S: learners per group.')
_K1 = flags.DEFINE_integer('k1', 4, 'K1: steps between local averagings.')
_K2 = flags.DEFINE_integer('k2', 4, 'K2: local averagings between global '
                           'ones.')
_STEPS = flags.DEFINE_integer('steps', 48, 'Timed steps per row, rounded up '
                              'to whole global periods (K1*K2).')
_DTYPE = flags.DEFINE_string('dtype', 'bfloat16', 'model.dtype')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 32, 'Synthetic image side.')
_LAYOUTS = flags.DEFINE_list(
    'layouts', ['vmap/im2col/scan', 'vmap/xla/scan', 'vmap/im2col/unroll',
                'unroll/xla/scan', 'unroll/im2col/scan'],
    'Packed rows, each runtime.learner_loop/model.conv/runtime.step_loop.')
_BUDGET = flags.DEFINE_float('budget_s', 270.0, 'No row starts after this '
                             'many seconds, and a row still running then is '
                             'stopped.')
_TINY = flags.DEFINE_bool(
    'tiny', False, 'CPU smoke-run sizes for the flags not given: cnn_small, '
    'P = 2 x B = 4 in one group, K1 = 2, K2 = 1, 4 steps, 16x16 images.')
_ROW = flags.DEFINE_string('row', None, 'Internal: measure this one row (a '
                           'JSON object) in this process and print it.')

TINY = {'models': ['cnn_small'], 'learners': 2, 'batch': 4, 'group_size': 2,
        'k1': 2, 'k2': 1, 'steps': 4, 'image_size': 16}
_ROW_PREFIX = 'ROW '


# ---- One row, in its own process ---------------------------------------

def measure(row: dict) -> dict:
  """Times one row (see the module docstring); returns what the table shows."""
  # Cold compiles, even where $JAX_COMPILATION_CACHE_DIR holds earlier runs'.
  compilation_cache.configure(compilation_cache.OFF)
  learners, batch = row['learners'], row['batch']
  config = cifar10.get_config()
  config.model.name = row['model']
  config.hier.num_learners, config.hier.group_size = learners, row['group']
  config.hier.k1, config.hier.k2 = row['k1'], row['k2']
  config.data.name, config.data.augment = 'synthetic', False
  config.data.batch_size = batch
  # Four minibatches of every learner: the data set only feeds the steps.
  data = datasets.synthetic(4 * learners * batch, 16, row['image_size'], 10)
  period = row['k1'] * row['k2']
  steps = row['steps']
  if row['learner_loop'] is None:  # One model, batch P*B.
    engine, _, conv = common.make_engine(
        config, data, (1, 1), 'vmap', 'xla', 'scan', row['dtype'])
    timing = common.hand_written_timing(
        engine.learner, data, learners * batch, steps, 3,
        devices=jax.local_devices()[:1])
    loops = ('-', '-')
  else:
    engine, sampler, conv = common.make_engine(
        config, data, (1, 1), row['learner_loop'], row['conv'],
        row['step_loop'], row['dtype'])
    timing = common.engine_timing(engine, sampler, data, steps, period)
    loops = (engine.execution.learner_loop, engine.execution.step_loop)
  stats = jax.local_devices()[0].memory_stats() or {}
  return {'images_per_s': timing.images_per_s, 'compile_s': timing.compile_s,
          'peak_bytes': stats.get('peak_bytes_in_use'),
          'learner_loop': loops[0], 'conv': conv, 'step_loop': loops[1],
          'machine': common.machine()}


# ---- The table ---------------------------------------------------------

def row_specs() -> list[dict]:
  """Every row, in table order, with the sizes it runs at."""
  period = _K1.value * _K2.value
  sizes = {'learners': _LEARNERS.value, 'batch': _BATCH.value,
           'group': _GROUP.value, 'k1': _K1.value, 'k2': _K2.value,
           'steps': -(-_STEPS.value // period) * period,
           'dtype': _DTYPE.value, 'image_size': _IMAGE_SIZE.value}
  rows = []
  for model in _MODELS.value:
    rows.append(dict(sizes, model=model, learner_loop=None, conv='xla',
                     step_loop=None))
    for layout in _LAYOUTS.value:
      learner_loop, conv, step_loop = layout.split('/')
      rows.append(dict(sizes, model=model, learner_loop=learner_loop,
                       conv=conv, step_loop=step_loop))
  return rows


def run_order(rows: list[dict]) -> list[int]:
  """Cheapest compiles first: unrolled learners repeat the model P times.

  Otherwise in table order, so list the cheaper models first in --models.
  """
  return sorted(range(len(rows)),
                key=lambda i: (rows[i]['learner_loop'] == 'unroll', i))


def run_row(row: dict, timeout_s: float) -> dict:
  """`measure(row)` in a fresh process: {'failed': why} if it did not end."""
  command = [sys.executable, os.path.abspath(__file__),
             '--row=' + json.dumps(row)]
  try:
    done = subprocess.run(command, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
  except subprocess.TimeoutExpired:
    return {'failed': f'stopped after {timeout_s:.0f} s (--budget_s)',
            'budget': True}
  for line in done.stdout.splitlines():
    if line.startswith(_ROW_PREFIX):
      return json.loads(line[len(_ROW_PREFIX):])
  tail = (done.stderr.strip().splitlines() or ['no output'])[-1]
  return {'failed': f'exit {done.returncode}: {tail}'}


def describe(row: dict) -> str:
  if row['learner_loop'] is None:
    return f'one model, batch {row["learners"] * row["batch"]}'
  return f'{row["learners"]} learners x {row["batch"]} on 1 device'


def memory(peak_bytes) -> str:
  return 'n/a' if peak_bytes is None else f'{peak_bytes / 2**30:.2f} GiB'


def table(rows: list[dict], results: list[dict]) -> list[str]:
  lines = ['| model | rows | runtime.learner_loop | model.conv | '
           'runtime.step_loop | images/s | vs one model | '
           'compile s per program | peak device memory |',
           '|---|---|---|---|---|---|---|---|---|']
  baseline = {}
  for row, result in zip(rows, results):
    if row['learner_loop'] is None and 'images_per_s' in result:
      baseline[row['model']] = result['images_per_s']
  for row, result in zip(rows, results):
    if 'images_per_s' not in result:
      lines.append(f'| {row["model"]} | {describe(row)} | '
                   f'{row["learner_loop"] or "-"} | {row["conv"]} | '
                   f'{row["step_loop"] or "-"} | {result["failed"]} | - | - '
                   '| - |')
      continue
    rate = result['images_per_s']
    ratio = (f'{rate / baseline[row["model"]]:.2f}x'
             if row['model'] in baseline else '-')
    compiles = ', '.join(f'{name} {seconds:.1f}'
                         for name, seconds in result['compile_s'].items())
    lines.append(f'| {row["model"]} | {describe(row)} | '
                 f'{result["learner_loop"]} | {result["conv"]} | '
                 f'{result["step_loop"]} | {common.fmt(rate)} | {ratio} | '
                 f'{compiles} | {memory(result["peak_bytes"])} |')
  return lines


def apply_tiny() -> None:
  """--tiny: the TINY sizes for every flag not given on the command line."""
  for name, value in TINY.items():
    if not flags.FLAGS[name].present:
      flags.FLAGS[name].value = value


def main(argv):
  del argv
  if _ROW.value is not None:
    print(_ROW_PREFIX + json.dumps(measure(json.loads(_ROW.value))),
          flush=True)
    return 0
  if _TINY.value:
    apply_tiny()
  start = time.perf_counter()
  rows = row_specs()
  results = [None] * len(rows)
  for i in run_order(rows):
    left = _BUDGET.value - (time.perf_counter() - start)
    if left <= 0:
      results[i] = {'failed': f'not run (--budget_s={_BUDGET.value:g})',
                    'budget': True}
    else:
      results[i] = run_row(rows[i], left)
    layout = '/'.join(str(rows[i][key] or '-') for key in
                      ('learner_loop', 'conv', 'step_loop'))
    outcome = results[i].get('failed') or (
        f'{common.fmt(results[i]["images_per_s"])} images/s')
    print(f'{rows[i]["model"]}, {describe(rows[i])}, {layout}: {outcome}',
          flush=True)
  machines = [r['machine'] for r in results if 'machine' in r]
  first = rows[0]
  print(f'\n{", ".join(_MODELS.value)}, {first["dtype"]}, '
        f'{first["image_size"]}x{first["image_size"]} synthetic images, '
        f'P = {first["learners"]} x B = {first["batch"]} (S = {first["group"]},'
        f' K1 = {first["k1"]}, K2 = {first["k2"]}), {first["steps"]} timed '
        f'steps; {machines[0] if machines else "no row ran"}; '
        f'{time.perf_counter() - start:.0f} s\n')
  print('\n'.join(table(rows, results)))
  # A row that broke fails the run; one the budget left out does not.
  broken = [r for r in results if 'failed' in r and 'budget' not in r]
  return 1 if broken else 0


if __name__ == '__main__':
  app.run(main)
