r"""When torch's model averagers average, next to `hier.levels`: a check.

  pip install torch==2.13.0   # CPU build; not a dependency of hier_avg
  python benchmarks/torch_mapping.py

Runs torch's `HierarchicalModelAverager(period_group_size_dict={2: 2, 6: 4})`
and `PeriodicModelAverager(period=2, warmup_steps=3)` on 4 CPU processes
(gloo) and records, after each 1-based step, which group each averaging
spanned: every process holds its rank as its parameter before each call, so
afterwards the value says who was averaged with whom (the mean of a pair,
of all 4, or unchanged). Prints one table against hier_avg's schedule for
`hier.levels=((2, 2), (4, 6))` (and `hier.sync_warmup_steps=3`): torch
counts its steps from 0, so out of the box it averages right after the
first step; with `averager.step = 1` before training it averages exactly
when hier_avg does.
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STEPS = 14
WORLD = 4
WARMUP = 3


def _torch_levels(rank, init_file, queue):
  """Per 1-based step, what the averagers did: None, 'pair' or 'all'."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.distributed as dist  # pylint: disable=g-import-not-at-top
  from torch.distributed.algorithms.model_averaging import (  # pylint: disable=g-import-not-at-top
      averagers, hierarchical_model_averager)
  dist.init_process_group('gloo', init_method=f'file://{init_file}',
                          rank=rank, world_size=WORLD)

  def spanned(average):
    param = torch.nn.Parameter(torch.tensor([float(rank)]))
    param.grad = torch.zeros(1)  # torch averages only what has a gradient.
    average([param])
    value = float(param.data[0])
    pair = (rank // 2) * 2 + 0.5
    return ('none' if value == rank else 'pair' if value == pair
            else 'all' if value == (WORLD - 1) / 2 else f'? {value}')

  runs = {}
  for start in (0, 1):
    averager = hierarchical_model_averager.HierarchicalModelAverager(
        period_group_size_dict={2: 2, 6: WORLD})
    averager.step = start
    runs[f'hier step={start}'] = [spanned(averager.average_parameters)
                                  for _ in range(STEPS)]
  for start in (0, 1):
    averager = averagers.PeriodicModelAverager(period=2,
                                               warmup_steps=WARMUP)
    averager.step = start
    runs[f'periodic step={start}'] = [spanned(averager.average_parameters)
                                      for _ in range(STEPS)]
  if rank == 0:
    queue.put(runs)
  dist.destroy_process_group()


def _hier_avg_levels(warmup=0, levels=((2, 2), (WORLD, 6))):
  from hier_avg.core.hierarchy import Hierarchy  # pylint: disable=g-import-not-at-top
  sizes, periods = zip(*levels)
  schedule = Hierarchy(WORLD, sizes, periods, warmup).schedule()
  names = {'local': 'pair', 'global': 'all'}
  return [names.get(getattr(schedule.level_after(t), 'name', None), 'none')
          for t in range(1, STEPS + 1)]


def main():
  import torch.multiprocessing as mp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  queue = mp.get_context('spawn').SimpleQueue()
  with tempfile.TemporaryDirectory() as tmp:
    mp.start_processes(_torch_levels, args=(os.path.join(tmp, 'init'), queue),
                       nprocs=WORLD, start_method='spawn')
  runs = queue.get()
  rows = {
      'torch HierarchicalModelAverager({2: 2, 6: 4})': runs['hier step=0'],
      '  the same with averager.step = 1': runs['hier step=1'],
      'hier_avg hier.levels=((2,2),(4,6))': _hier_avg_levels(),
      'torch PeriodicModelAverager(2, warmup_steps=3)': runs[
          'periodic step=0'],
      '  the same with averager.step = 1 ': runs['periodic step=1'],
      'hier_avg levels=((4,2),), sync_warmup_steps=3': _hier_avg_levels(
          WARMUP, ((WORLD, 2),)),
  }
  print(f'torch {torch.__version__}: who averaged after each 1-based step '
        '(pair: groups of 2, all: the 4 learners; torch warmup steps are '
        "DDP's gradient all-reduce, shown as none)\n")
  width = max(map(len, rows))
  print(' ' * width + ' | ' + ' '.join(f'{t:>4}' for t in range(1, STEPS + 1)))
  for name, levels in rows.items():
    print(f'{name:<{width}} | ' + ' '.join(f'{l:>4}' for l in levels))
  # After its warmup torch also averages after step W itself: a no-op, as
  # DDP's last warmup step left every model equal.
  periodic = runs['periodic step=1'][WARMUP:]
  same = (runs['hier step=1'] == _hier_avg_levels() and
          periodic == _hier_avg_levels(WARMUP, ((WORLD, 2),))[WARMUP:])
  print('\ntorch with averager.step = 1 averages when hier_avg does (after '
        f'the warmup): {same}')
  return 0 if same else 1


if __name__ == '__main__':
  sys.exit(main())
