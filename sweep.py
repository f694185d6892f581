r"""Runs a grid of training runs and compares them.

From a sweep file (variants x grid, see configs/sweeps/):

  python sweep.py --sweep=configs/sweeps/cpu_study.py --root=/tmp/study

Or ad hoc, a grid over config keys of one config:

  python sweep.py --config=configs/cifar10.py:cpu --root=/tmp/k1 \
      --grid=hier.k1=1,4,16 --grid=seed=0,1,2 --set=data.name=synthetic

Each point trains in ROOT/<point>/ (its own launch.py process; output in
ROOT/logs/<point>.log). Rerunning skips finished points and resumes
interrupted ones. At the end ROOT/results.csv (every point), ROOT/results.md
(mean ± std over seeds) and the plots accuracy_vs_{epoch,bytes,wall}.png and
train_loss_vs_epoch.png are written. --parallel=N runs N points at once
(on an accelerator they share its memory).
"""

import signal
import sys

from absl import app
from absl import flags

from hier_avg.tools import sweeps as sweep
from hier_avg.errors import UserError, require

_SWEEP = flags.DEFINE_string('sweep', None,
                             'A sweep file defining get_sweep().')
_CONFIG = flags.DEFINE_string(
    'config', None, 'Without --sweep: the config file (with :preset).')
_GRID = flags.DEFINE_multi_string(
    'grid', [], 'Without --sweep: key=value1,value2 (repeat for more keys).')
_SET = flags.DEFINE_multi_string(
    'set', [], 'key=value overrides for every point (repeatable).')
_ROOT = flags.DEFINE_string('root', None, 'Folder holding every point.')
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'Points run at once.')
_REPORT_ONLY = flags.DEFINE_bool(
    'report_only', False, 'Only write the table and plots of finished points.')
flags.mark_flag_as_required('root')


def _spec() -> sweep.SweepSpec:
  require((_SWEEP.value is None) != (_CONFIG.value is None),
          'give exactly one of --sweep=FILE or --config=FILE[:preset].')
  if _SWEEP.value:
    require(not _GRID.value, '--grid goes with --config, not --sweep.')
    spec = sweep.load_spec(_SWEEP.value)
  else:
    spec = sweep.SweepSpec(config=_CONFIG.value,
                           grid=sweep.parse_grid(_GRID.value))
  for key, values in sweep.parse_grid(_SET.value).items():
    require(len(values) == 1, f'--set={key}=... takes one value.')
    spec.overrides = {**spec.overrides, key: values[0]}
  return spec


class _Stopped(Exception):
  """SIGTERM or SIGINT: the sweep stops its running points and exits."""


def _stop_on(signum, frame):
  del frame
  for sig in (signal.SIGTERM, signal.SIGINT):  # Stop once, undisturbed.
    signal.signal(sig, signal.SIG_IGN)
  raise _Stopped(signal.Signals(signum).name)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # SIGTERM (a scheduler, `kill`) as Ctrl-C: the points still running are
  # stopped, each saving a checkpoint, instead of training on orphaned.
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, _stop_on)
  try:
    spec = _spec()
    failed = []
    if not _REPORT_ONLY.value:
      failed = sweep.run(spec, _ROOT.value, _PARALLEL.value)
    result = sweep.report(spec, _ROOT.value)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except _Stopped as e:
    print(f'sweep: stopped by {e}; the points that were running saved '
          'checkpoints. Rerun the same command to resume.', file=sys.stderr)
    sys.exit(128 + signal.Signals[str(e)].value)
  print(open(result['markdown']).read(), end='')
  print(f"sweep: wrote {result['csv']}, {result['markdown']} and "
        f"{len(result['plots'])} plots.")
  if failed or result['missing']:
    print(f"error: {result['missing']} of {len(spec.points())} points have "
          f'not finished (failed now: {", ".join(p.name for p in failed)}); '
          'see ROOT/logs/ and rerun to resume them.', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
