"""Sweeps: many runs of one base config, one workdir each, then a comparison.

A sweep is named *variants* (each a set of config overrides, e.g. "sync" or
"hier S=4 K1=4 K2=4") crossed with a *grid* (every combination of listed
values, e.g. seeds or learning rates). Each resulting point runs as its own
`launch.py` process in `root/<point name>/`, so a point that fails or is
killed costs only itself, and rerunning the sweep skips finished points
(those with a `summary.json` recording the point's settings; other settings
are refused) and resumes interrupted ones from their
checkpoints. `report` then writes a CSV of every point, a Markdown table
with mean ± std over seeds, and comparison plots.
"""

import csv
import dataclasses
import importlib.util
import itertools
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from hier_avg import config_keys
from hier_avg import errors
from hier_avg.core.hierarchy import Hierarchy
from hier_avg.tools import cost_model
from hier_avg.errors import UserError, require
from hier_avg.run import files
from hier_avg.run.metrics import METRICS_FILE, SUMMARY_FILE, read_rows
from hier_avg.run.metrics import read_summary, save_figure

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
LOG_DIR = 'logs'
RESULTS_CSV = 'results.csv'
RESULTS_MD = 'results.md'
# (file, x-axis metric key, x label, x scale) of the comparison plots.
PLOTS = (
    ('accuracy_vs_epoch.png', 'epoch', 'epoch', 'linear'),
    ('accuracy_vs_bytes.png', 'bytes_averaged_per_learner',
     'bytes averaged per learner', 'symlog'),
    ('accuracy_vs_wall.png', 'wall_s', 'wall time (s)', 'linear'),
)
LOSS_PLOT = 'train_loss_vs_epoch.png'
DRIFT_PLOT = 'drift_vs_step.png'
# Per cluster of `SweepSpec.clusters`, test accuracy against modeled time.
MODELED_PLOT = 'accuracy_vs_modeled_time_{}.png'
# What runs with the simulated clock add to their summary (faults.*).
SIMULATED = ('simulated_seconds', 'goodput', 'lost_learner_steps')
SIMULATED_PLOT = 'accuracy_vs_simulated_time.png'


@dataclasses.dataclass(frozen=True)
class Point:
  """One run: its folder name, its group (name without the seed), overrides,
  and `settings`: the value, as JSON, of every key that changes results in
  its whole config (the sweep's config file and preset, then its
  overrides), which a finished run's summary must record to be reused."""
  name: str
  group: str
  overrides: tuple[tuple[str, Any], ...]
  settings: tuple[tuple[str, str], ...] = ()

  def flags(self) -> list[str]:
    return [f'--config.{key}={_flag_value(value)}'
            for key, value in self.overrides]


def _flag_value(value) -> str:
  return repr(value) if isinstance(value, (tuple, list)) else str(value)


def _short(key: str) -> str:
  """'hier.k1' -> 'k1': the last part names the value well enough."""
  return key.rsplit('.', 1)[-1]


def _part(key: str, value) -> str:
  """'k1=4' for a point's folder name; a path's separators become '_'."""
  return f'{_short(key)}={value}'.replace(os.sep, '_')


@dataclasses.dataclass
class SweepSpec:
  """A base config, overrides for all points, variants and a grid.

  Attributes:
    config: a config file for `launch.py --config`, with an optional
      `:preset`; a relative path is taken from the current folder, else
      from the repository root.
    overrides: config keys set for every point (e.g. the data path).
    variants: variant name -> its overrides; {} means one unnamed variant.
    grid: config key -> list of values; every combination runs once per
      variant. A key named 'seed' is aggregated over in the report.
    restrict: variant name -> {grid key: the values it runs}, for variants
      that need only part of the grid (e.g. fewer seeds).
    linked: config key -> grid key: the key takes that grid key's value at
      every point (e.g. {'faults.seed': 'seed'}: each seed draws its own
      simulated failures).
    clusters: name -> a `cost_model` cluster: the report adds, per
      cluster, each run's modeled wall clock (`modeled_seconds`, with the
      sweep's measured compute per step, `sweep_step_s`) to the table and
      plots test accuracy against it.
    accuracy_targets: test accuracies for a table of the modeled time each
      group takes to reach them on each cluster (`time_to_accuracy`).
  """
  config: str
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  variants: Mapping[str, Mapping[str, Any]] = dataclasses.field(
      default_factory=dict)
  grid: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)
  restrict: Mapping[str, Mapping[str, Sequence[Any]]] = dataclasses.field(
      default_factory=dict)
  linked: Mapping[str, str] = dataclasses.field(default_factory=dict)
  clusters: Mapping[str, cost_model.AnyCluster] = dataclasses.field(
      default_factory=dict)
  accuracy_targets: Sequence[float] = ()

  def points(self) -> list[Point]:
    """Every point: each grid cell (row-major) with every variant in turn.

    Cells go outermost so an interrupted sweep has the first seeds of every
    variant rather than every seed of the first variants.
    """
    for key, values in self.grid.items():
      require(len(values) > 0, f'sweep grid key {key!r} has no values.')
    for variant, allowed in self.restrict.items():
      require(variant in self.variants and set(allowed) <= set(self.grid),
              f'sweep restrict[{variant!r}] must name a variant and grid '
              'keys.')
    for key, grid_key in self.linked.items():
      require(grid_key in self.grid and key not in self.grid,
              f'sweep linked[{key!r}] must name a grid key ({grid_key!r} is '
              'not one), for a key outside the grid.')
    variants = self.variants or {'': {}}
    base = self.base_config()
    names = set()
    points = []
    for values in itertools.product(*self.grid.values()):
      for variant, variant_overrides in variants.items():
        cell = dict(zip(self.grid, values))
        allowed = self.restrict.get(variant, {})
        if any(cell[k] not in v for k, v in allowed.items()):
          continue
        parts = [_part(k, v) for k, v in cell.items()]
        group_parts = [_part(k, v) for k, v in cell.items() if k != 'seed']
        name = ','.join(([variant] if variant else []) + parts) or 'base'
        group = ','.join(([variant] if variant else []) + group_parts)
        require(os.sep not in name,
                f'sweep point name {name!r} is no folder name: take the '
                f'{os.sep} out of the variant\'s name.')
        require(name not in names,
                f'sweep points share the folder name {name!r}; give their '
                'variants other names, or grid values that differ in more '
                'than their path separators.')
        names.add(name)
        linked = {key: cell[g] for key, g in self.linked.items()}
        overrides = {**self.overrides, **variant_overrides, **cell,
                     **linked}
        points.append(Point(name, group or 'base', tuple(overrides.items()),
                            _settings(base, overrides)))
    return points

  def base_config(self):
    """The config file's config (with its preset) that every point
    starts from, as `launch.py --config` loads it."""
    path, _, preset = self.config_path().partition(':')
    module_spec = importlib.util.spec_from_file_location('sweep_config', path)
    module = importlib.util.module_from_spec(module_spec)
    try:
      module_spec.loader.exec_module(module)
      return module.get_config(preset) if preset else module.get_config()
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f'sweep config {self.config!r} could not be loaded: '
                      f'{type(e).__name__}: {e}') from None

  def config_path(self) -> str:
    path, _, preset = self.config.partition(':')
    if not os.path.isabs(path) and not os.path.exists(path):
      path = os.path.join(REPO_ROOT, path)
    require(os.path.exists(path), f'sweep config file {self.config!r} not '
            'found; give a path like configs/cifar10.py:cpu.')
    path = os.path.abspath(path)
    return f'{path}:{preset}' if preset else path


def load_spec(path: str) -> SweepSpec:
  """A sweep file: Python defining `get_sweep()` -> SweepSpec."""
  require(os.path.exists(path), f'--sweep={path} not found.')
  namespace = {'__file__': path}
  with open(path) as f:
    exec(compile(f.read(), path, 'exec'), namespace)  # pylint: disable=exec-used
  require('get_sweep' in namespace,
          f'--sweep={path} must define get_sweep() returning a SweepSpec.')
  return namespace['get_sweep']()


def parse_grid(entries: Sequence[str]) -> dict[str, list]:
  """['hier.k1=1,4,16', 'opt.milestones=(30,60),(50,75)'] -> values.

  Each value is read as its key's type (`config_keys.parse`): 'true' is the
  boolean True, '(30,60)' a tuple.
  """
  grid = {}
  for entry in entries:
    key, sep, values = entry.partition('=')
    require(bool(sep and key and values),
            f'--grid={entry!r} must look like key=value1,value2.')
    grid[key] = [config_keys.parse(key, text) for text in _split(values)]
  return grid


def _split(values: str) -> list[str]:
  """'1,(2,3),4' -> ['1', '(2,3)', '4']: commas inside brackets stay."""
  parts, depth, start = [], 0, 0
  for i, char in enumerate(values):
    depth += (char in '([') - (char in ')]')
    if char == ',' and depth == 0:
      parts.append(values[start:i])
      start = i + 1
  return parts + [values[start:]]


def _settings(base, overrides: Mapping[str, Any]) -> tuple:
  """`Point.settings` of `base` with `overrides` set."""
  config = base.copy_and_resolve_references()
  for key, value in overrides.items():
    config_keys.require_known(key)
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value
  return tuple((key, json.dumps(config_keys.as_json(value)))
               for key, value in config_keys.flatten(config).items()
               if config_keys.changes_results(key))


def finished_summary(root: str, point: Point) -> dict | None:
  """`point`'s summary if it has run to the end with the sweep's settings.

  None while it has not finished. Raises UserError when its summary records
  another value for a key that changes results (the sweep file, its config
  file or a --set changed since): skipping it would report a run of other
  settings under this point's name. A key the summary lacks (added to
  hier_avg after the run) counts as its default.
  """
  if not os.path.exists(os.path.join(root, point.name, SUMMARY_FILE)):
    return None
  summary = read_summary(os.path.join(root, point.name))
  saved = summary.get('config', {})
  for key, expected in point.settings:
    node = saved
    for part in key.split('.'):
      node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
    if node is _MISSING:
      node = config_keys.as_json(config_keys.BY_NAME[key].default)
    if json.dumps(node) != expected:
      raise UserError(
          f'sweep point {point.name} in {root} finished with {key}='
          f'{node!r}, but the sweep now sets {json.loads(expected)!r}; use '
          f'a new --root, or delete {os.path.join(root, point.name)} to '
          'rerun it.')
  return summary


def is_finished(root: str, point: Point) -> bool:
  return finished_summary(root, point) is not None


_MISSING = object()


def _command(spec: SweepSpec, root: str, point: Point) -> list[str]:
  launch = os.path.join(REPO_ROOT, 'launch.py')
  return [sys.executable, launch, f'--config={spec.config_path()}',
          f'--workdir={os.path.join(root, point.name)}', *point.flags()]


def _environment(parallel: int) -> dict[str, str]:
  env = dict(os.environ)
  if parallel > 1:
    # Several runs share each accelerator: split its memory between them
    # instead of letting the first one preallocate most of it.
    env.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
    env.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION',
                   f'{0.9 / parallel:.3f}')
  return env


def run(spec: SweepSpec, root: str, parallel: int = 1,
        echo: Callable[[str], None] = print) -> list[Point]:
  """Runs every unfinished point, `parallel` at a time; returns failures.

  A point's output goes to `root/logs/<name>.log`. A point that fails is
  reported and left for the next run of the sweep to retry (it resumes
  from its last checkpoint); the others go on. A point refused for bad
  input (`errors.EXIT_BAD_INPUT`: the same input would fail every point, or
  the sweep is wrong) stops the
  sweep: the points still running are stopped as by SIGTERM (each saves a
  checkpoint) and the point's error is raised. Any other way the sweep
  itself ends early (an error, Ctrl-C) stops them the same way.
  """
  require(parallel >= 1, f'--parallel={parallel} must be >= 1.')
  points = spec.points()
  todo = [p for p in points if not is_finished(root, p)]
  echo(f'sweep: {len(points)} points in {root}: '
       f'{len(points) - len(todo)} finished, {len(todo)} to run.')
  os.makedirs(os.path.join(root, LOG_DIR), exist_ok=True)
  env = _environment(parallel)
  queue, running, failed = list(todo), {}, []
  try:
    while queue or running:
      while queue and len(running) < parallel:
        point = queue.pop(0)
        echo(f'sweep: start {point.name}')
        running[point] = _start(spec, root, point, env)
      time.sleep(0.2)
      for point, (process, log, started) in list(running.items()):
        if process.poll() is None:
          continue
        log.close()
        del running[point]
        if not _report_finished(root, point, process.returncode,
                                time.perf_counter() - started, log.name,
                                echo):
          failed.append(point)
  finally:
    _stop(running, echo)
  return failed


def _start(spec: SweepSpec, root: str, point: Point, env):
  # Appended: the log of an interrupted attempt stays readable.
  log = open(os.path.join(root, LOG_DIR, point.name + '.log'), 'a')
  process = subprocess.Popen(_command(spec, root, point), env=env,
                             stdout=log, stderr=subprocess.STDOUT,
                             cwd=REPO_ROOT)
  return process, log, time.perf_counter()


def _report_finished(root: str, point: Point, returncode: int,
                     seconds: float, log_path: str, echo) -> bool:
  """Echoes how `point` ended; True if it finished. Raises on bad input."""
  summary = finished_summary(root, point)
  if returncode == 0 and summary is not None:
    accuracy = summary.get('test_accuracy', float('nan'))
    echo(f'sweep: done  {point.name} in {seconds:.0f} s, '
         f'test accuracy {accuracy:.4f}')
    return True
  echo(f'sweep: FAILED {point.name} (exit {returncode}); see {log_path}')
  if returncode == errors.EXIT_BAD_INPUT:
    with open(log_path) as f:
      lines = [line.strip() for line in f if line.startswith('error: ')]
    raise UserError(f'sweep point {point.name} was refused '
                    f'({lines[-1] if lines else "see " + log_path}); the '
                    'sweep stopped.')
  return False


def _stop(running: dict, echo) -> None:
  """Stops the points still running, each saving a checkpoint first."""
  for point, (process, _, _) in running.items():
    echo(f'sweep: stop  {point.name}')
    process.terminate()
  for process, log, _ in running.values():
    try:
      process.wait(timeout=120)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()
    log.close()


# ---- Report -----------------------------------------------------------------

def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  values = np.asarray(values, np.float64)
  std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
  return float(values.mean()), std


def level_sizes(summary: dict) -> dict[str, int]:
  """A run's averaging levels, name -> group size, innermost first ({} for
  ASGD, which has none)."""
  levels = summary.get('levels') or []
  if not levels:
    return {}
  sizes, periods = zip(*levels)
  names = Hierarchy(summary['config']['hier']['num_learners'], sizes,
                    periods).level_names
  return dict(zip(names, sizes))


def measured_step_s(rows: Sequence[dict], summary: dict) -> float:
  """One learner's compute seconds per step in a run: B / (images per
  second), the median over its rows (all P learners shared this machine,
  so a step of P learners took P times one learner's)."""
  rates = [r['images_per_s'] for r in rows if r.get('images_per_s')]
  return summary['config']['data']['batch_size'] / float(np.median(rates))


def modeled_seconds(rows: Sequence[dict], summary: dict,
                    cluster: cost_model.AnyCluster,
                    step_s: float) -> list[float]:
  """Per metrics row: the run's wall clock had each learner its own device
  on `cluster` (`cost_model.elapsed_s`): `step_s` compute seconds per
  step, and the cost model's communication for the averagings the run
  counted by then."""
  sizes = level_sizes(summary)
  require(bool(sizes), 'a modeled wall clock needs averaging levels; '
          f"hier.algorithm={summary['config']['hier']['algorithm']!r} has "
          'none.')
  # Bytes per event of each level: a fragmented level's events carry a
  # fragment each.
  per_event = {name: summary[f'{name}_bytes_per_learner'] /
               summary[f'{name}_averagings']
               for name in sizes if summary.get(f'{name}_averagings')}
  model_bytes = max(per_event.values())
  return [cost_model.elapsed_s(
      cluster, row['step'], step_s,
      [(size, row.get(f'{name}_averagings', 0),
        per_event.get(name, model_bytes))
       for name, size in sizes.items()], model_bytes) for row in rows]


def sweep_step_s(spec: SweepSpec, root: str) -> float | None:
  """The compute seconds per step every modeled clock uses: the median of
  the finished runs' `measured_step_s`. Every point computes the same
  model on the same batch, so their differences are the machine's noise
  (other work on shared cores), not the algorithm's; None without runs."""
  measured = []
  for point in spec.points():
    summary = finished_summary(root, point)
    if summary is not None and level_sizes(summary):
      measured.append(measured_step_s(
          read_rows(os.path.join(root, point.name, METRICS_FILE)), summary))
  return float(np.median(measured)) if measured else None


def collect(spec: SweepSpec, root: str) -> list[dict]:
  """One row per finished point: its settings and its summary numbers."""
  step_s = sweep_step_s(spec, root) if spec.clusters else None
  rows = []
  for point in spec.points():
    summary = finished_summary(root, point)
    if summary is None:
      continue
    row = {'point': point.name, 'group': point.group}
    row.update({key: value for key, value in point.overrides
                if key in spec.grid or any(key in v for v in
                                           spec.variants.values())})
    for key in ('test_accuracy', 'test_loss', 'final_train_loss', 'epochs',
                'steps', 'bytes_averaged_per_learner', 'global_averagings',
                'local_averagings', 'images_per_s', 'wall_s'):
      row[key] = summary.get(key, '')
    # What crosses the network between nodes (the counters' split; runs
    # from before it: global averaging, or for ASGD every gradient).
    row['global_bytes_per_learner'] = summary.get(
        'bytes_between_hosts_per_learner', summary.get(
            'global_bytes_per_learner',
            summary.get('gradient_bytes_per_learner', '')))
    row['level_bytes_per_learner'] = ' / '.join(
        str(summary[f'{name}_bytes_per_learner'])
        for name in level_sizes(summary))
    for key in SIMULATED:
      row[key] = summary.get(key, '')
    row['skipped_per_level'] = ' / '.join(
        str(summary[f'{name}_skipped']) for name in level_sizes(summary)
        if f'{name}_skipped' in summary)
    if spec.clusters:
      metrics = read_rows(os.path.join(root, point.name, METRICS_FILE))
      for name, cluster in spec.clusters.items():
        row[f'modeled_s:{name}'] = (
            modeled_seconds(metrics, summary, cluster, step_s)[-1]
            if level_sizes(summary) else '')
    rows.append(row)
  return rows


def unfinished(spec: SweepSpec, root: str) -> list[tuple[str, str]]:
  """(point, why) for each point without a summary: the last `error:` line
  of its log (a diverged run says so there), else whether it started."""
  result = []
  for point in spec.points():
    if is_finished(root, point):
      continue
    log_path = os.path.join(root, LOG_DIR, point.name + '.log')
    why = 'not started'
    if os.path.exists(log_path):
      with open(log_path) as f:
        errors_seen = [line.strip()[len('error: '):] for line in f
                       if line.startswith('error: ')]
      why = errors_seen[-1] if errors_seen else 'running or interrupted'
    result.append((point.name, why))
  return result


def aggregate(rows: list[dict], clusters: Sequence[str] = ()) -> list[dict]:
  """Rows grouped by `group` (seeds together): mean and std of the numbers."""
  groups: dict[str, list[dict]] = {}
  for row in rows:
    groups.setdefault(row['group'], []).append(row)
  table = []
  for group, members in groups.items():
    entry = {'group': group, 'runs': len(members)}
    for key in ('test_accuracy', 'final_train_loss', 'wall_s'):
      entry[key] = _mean_std([m[key] for m in members])
    for key in SIMULATED:
      values = [m.get(key, '') for m in members]
      entry[key] = _mean_std(values) if '' not in values else None
    skipped = [m.get('skipped_per_level') for m in members]
    entry['skipped_per_level'] = (
        np.mean([[int(n) for n in s.split(' / ')] for s in skipped], 0)
        if all(skipped) else None)
    for name in clusters:
      values = [m[f'modeled_s:{name}'] for m in members]
      entry[f'modeled_s:{name}'] = (_mean_std(values) if '' not in values
                                    else None)
    for key in ('bytes_averaged_per_learner', 'global_bytes_per_learner',
                'global_averagings', 'level_bytes_per_learner'):
      entry[key] = members[0][key]
    entry['epochs'] = members[0]['epochs']
    table.append(entry)
  return table


def markdown_table(table: list[dict], clusters: Sequence[str] = (),
                   not_finished: Sequence[tuple[str, str]] = ()) -> str:
  """The table of `aggregate`; then the points that did not finish."""
  modeled = ''.join(f' modeled s ({name}) |' for name in clusters)
  lines = ['| point | runs | epochs | test accuracy | final train loss | '
           'MB sent per learner (all / between nodes) | MB per level '
           f'(innermost first) | global averagings |{modeled} wall s |',
           '|---|---|---|---|---|---|---|---|' + '---|' * len(clusters)
           + '---|']
  for e in table:
    acc, acc_std = e['test_accuracy']
    loss, loss_std = e['final_train_loss']
    wall, _ = e['wall_s']
    megabytes = (e['bytes_averaged_per_learner'] or 0) / 1e6
    network = (e['global_bytes_per_learner'] or 0) / 1e6
    per_level = ' / '.join(
        f'{int(b) / 1e6:,.1f}' for b in
        e['level_bytes_per_learner'].split(' / ')) if e[
            'level_bytes_per_learner'] else '—'
    times = ''.join(
        ' — |' if e[f'modeled_s:{name}'] is None else
        ' {:,.0f} ± {:,.0f} |'.format(*e[f'modeled_s:{name}'])
        for name in clusters)
    lines.append(
        f"| {e['group']} | {e['runs']} | {e['epochs']:.2f} | "
        f'{acc:.4f} ± {acc_std:.4f} | {loss:.4f} ± {loss_std:.4f} | '
        f'{megabytes:,.1f} / {network:,.1f} | {per_level} | '
        f"{e['global_averagings']} |{times} {wall:.0f} |")
  if not_finished:
    lines += ['', 'Not finished:', '']
    lines += [f'- {name}: {why}' for name, why in not_finished]
  return '\n'.join(lines) + '\n'


def _curves(spec: SweepSpec, root: str, key: str
            ) -> dict[str, list[list[dict]]]:
  """Per group, each finished seed's metric rows that have `key`, each
  with its modeled time on every cluster (`modeled_s:<name>`) where the
  run has averaging levels."""
  curves: dict[str, list[list[dict]]] = {}
  step_s = sweep_step_s(spec, root) if spec.clusters else None
  for point in spec.points():
    summary = finished_summary(root, point)
    if summary is None:
      continue
    rows = read_rows(os.path.join(root, point.name, METRICS_FILE))
    if level_sizes(summary):
      for name, cluster in spec.clusters.items():
        for row, seconds in zip(rows, modeled_seconds(rows, summary,
                                                      cluster, step_s)):
          row[f'modeled_s:{name}'] = seconds
    rows = [r for r in rows if key in r]
    if rows:
      curves.setdefault(point.group, []).append(rows)
  return curves


def _mean_curve(runs: list[list[dict]], x_key: str, y_key: str):
  """x and y (mean over runs) at the steps every run logged."""
  steps = set.intersection(*[{r['step'] for r in run} for run in runs])
  steps = sorted(steps)
  by_step = [{r['step']: r for r in run} for run in runs]
  x = [np.mean([b[s][x_key] for b in by_step]) for s in steps]
  y = np.array([[b[s][y_key] for s in steps] for b in by_step])
  return np.asarray(x), y.mean(0), y.std(0)


def _draw(ax, curves, x_key: str, y_key: str, marker: str | None) -> None:
  """One line per group (mean over its runs), a band of one std."""
  for group, runs in curves.items():
    runs = [run for run in runs if all(x_key in r for r in run)]
    if not runs:
      continue
    x, y, std = _mean_curve(runs, x_key, y_key)
    line, = ax.plot(x, y, label=f'{group} (n={len(runs)})', marker=marker,
                    markersize=3)
    if len(runs) > 1:
      ax.fill_between(x, y - std, y + std, alpha=0.15,
                      color=line.get_color())
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)


def plot(spec: SweepSpec, root: str) -> list[str]:
  """Test accuracy vs epoch, bytes, wall time, each cluster's modeled
  time and the simulated clock (where runs have one); train loss vs
  epoch; each level's drift vs step."""
  # A bare Figure, not pyplot: no global backend switch (see metrics.plot).
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  written = []
  figures = [(name, x, label, scale, 'test_accuracy', 'test accuracy')
             for name, x, label, scale in PLOTS]
  figures += [(MODELED_PLOT.format(name), f'modeled_s:{name}',
               f'modeled wall clock on {name} (s)', 'linear',
               'test_accuracy', 'test accuracy') for name in spec.clusters]
  figures.append((SIMULATED_PLOT, 'simulated_seconds',
                  'simulated wall clock (s)', 'linear', 'test_accuracy',
                  'test accuracy'))
  figures.append((LOSS_PLOT, 'epoch', 'epoch', 'linear', 'train_loss',
                  'train loss (mean of learners)'))
  for filename, x_key, x_label, x_scale, y_key, y_label in figures:
    curves = _curves(spec, root, y_key)
    # Only runs with a simulated clock have its axis.
    if x_key == 'simulated_seconds' and not any(
        x_key in run[0] for runs in curves.values() for run in runs):
      continue
    if not curves:
      continue
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    _draw(ax, curves, x_key, y_key,
          'o' if y_key == 'test_accuracy' else None)
    ax.set(xlabel=x_label, ylabel=y_label, xscale=x_scale)
    if y_key == 'train_loss':
      ax.set_yscale('log')
    fig.tight_layout()
    path = os.path.join(root, filename)
    save_figure(fig, path, dpi=110)
    written.append(path)
  drift = _plot_drift(spec, root, Figure)
  return written + ([drift] if drift else [])


def drift_keys(spec: SweepSpec, root: str) -> list[str]:
  """The drift and spread metrics the finished runs logged, each once,
  innermost level first."""
  keys = set()
  for point in spec.points():
    if is_finished(root, point):
      rows = read_rows(os.path.join(root, point.name, METRICS_FILE))
      keys.update(k for r in rows for k in r
                  if k.endswith(('_drift', '_spread')))
  return sorted(keys, key=_level_order)


def _level_order(key: str) -> tuple:
  """'local_drift' < 'level1_drift' < 'global_drift' < 'global_spread'."""
  name, _, measure = key.rpartition('_')
  rank = (0 if name == 'local' else 10 ** 6 if name == 'global' else
          int(name[len('level'):]) if name.startswith('level') else 10 ** 5)
  return rank, measure


def _plot_drift(spec: SweepSpec, root: str, Figure) -> str | None:  # pylint: disable=invalid-name
  """drift_vs_step.png: a panel per level's drift (and spread), a line per
  group; None when no run measured drift."""
  keys = drift_keys(spec, root)
  if not keys:
    return None
  fig = Figure(figsize=(7, 3.2 * len(keys)))
  for ax, key in zip(np.atleast_1d(fig.subplots(len(keys), 1)), keys):
    _draw(ax, _curves(spec, root, key), 'step', key, None)
    ax.set(xlabel='step', ylabel=key.replace('_', ' '), yscale='log')
  fig.tight_layout()
  path = os.path.join(root, DRIFT_PLOT)
  save_figure(fig, path, dpi=110)
  return path


def time_to_accuracy(x, accuracy, target: float) -> float | None:
  """When a curve (x increasing, its mean test accuracy) first reaches
  `target`, interpolated linearly between evaluations; None if never."""
  for i, (x_now, y_now) in enumerate(zip(x, accuracy)):
    if y_now >= target:
      if i == 0:
        return float(x_now)
      x_before, y_before = x[i - 1], accuracy[i - 1]
      return float(x_before + (target - y_before) * (x_now - x_before) /
                   (y_now - y_before))
  return None


def time_to_accuracy_table(spec: SweepSpec, root: str) -> str:
  """Markdown: per group and cluster, the modeled seconds its mean test
  accuracy took to reach each of `spec.accuracy_targets`."""
  curves = _curves(spec, root, 'test_accuracy')
  header = ''.join(f' {name}: {target:g} |' for name in spec.clusters
                   for target in spec.accuracy_targets)
  lines = ['Modeled seconds to reach a test accuracy (mean curve over seeds; '
           '— : not reached):', '', f'| point |{header}',
           '|---|' + '---|' * (len(spec.clusters) *
                               len(spec.accuracy_targets))]
  for group, runs in curves.items():
    cells = []
    for name in spec.clusters:
      runs_here = [run for run in runs
                   if all(f'modeled_s:{name}' in r for r in run)]
      if not runs_here:
        cells += [' — |'] * len(spec.accuracy_targets)
        continue
      x, y, _ = _mean_curve(runs_here, f'modeled_s:{name}', 'test_accuracy')
      for target in spec.accuracy_targets:
        seconds = time_to_accuracy(x, y, target)
        cells.append(' — |' if seconds is None else f' {seconds:.1f} |')
    lines.append(f'| {group} |' + ''.join(cells))
  return '\n'.join(lines) + '\n'


def simulated_table(spec: SweepSpec, root: str, table: list[dict]) -> str:
  """Markdown: per group with a simulated clock (`faults.*`), its
  simulated seconds, goodput, learner-steps lost to outages, averagings
  skipped per level (means over seeds) and the simulated seconds each
  seed took to reach each of `spec.accuracy_targets` (mean ± std of the
  seeds that did, and how many did); '' without such runs."""
  clocked = [e for e in table if e['simulated_seconds'] is not None]
  if not clocked:
    return ''
  curves = _curves(spec, root, 'test_accuracy')
  header = ''.join(f' simulated s to {t:g} |' for t in spec.accuracy_targets)
  lines = ['Simulated clock (hier_avg/tools/simulated_clock.py; — : none):',
           '', '| point | simulated s | goodput | learner-steps lost | '
           f'averagings skipped per level |{header}',
           '|---|---|---|---|---|' + '---|' * len(spec.accuracy_targets)]
  for e in clocked:
    cells = []
    for target in spec.accuracy_targets:
      reached = [time_to_accuracy(
          [r['simulated_seconds'] for r in run],
          [r['test_accuracy'] for r in run], target)
          for run in curves.get(e['group'], [])]
      reached = [t for t in reached if t is not None]
      cells.append(' — |' if not reached else ' {:.1f} ± {:.1f} ({}/{}) |'
                   .format(*_mean_std(reached), len(reached), e['runs']))
    lost = e['lost_learner_steps']
    skipped = e['skipped_per_level']
    lines.append(
        f"| {e['group']} | {e['simulated_seconds'][0]:.1f} ± "
        f"{e['simulated_seconds'][1]:.1f} | {e['goodput'][0]:.2f} | "
        + ('— |' if lost is None else f'{lost[0]:.0f} |')
        + (' — |' if skipped is None else
           ' ' + ' / '.join(f'{n:.1f}' for n in skipped) + ' |')
        + ''.join(cells))
  return '\n'.join(lines) + '\n'


def report(spec: SweepSpec, root: str) -> dict[str, Any]:
  """Writes results.csv, results.md and the plots; returns what it wrote."""
  rows = collect(spec, root)
  if not rows:
    raise UserError(f'no finished sweep points in {root}; run the sweep '
                    'first.')
  csv_path = os.path.join(root, RESULTS_CSV)
  columns = list(dict.fromkeys(k for row in rows for k in row))
  with files.atomic(csv_path) as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows(rows)
  table = aggregate(rows, tuple(spec.clusters))
  md_path = os.path.join(root, RESULTS_MD)
  with files.atomic(md_path) as f:
    f.write(markdown_table(table, tuple(spec.clusters),
                           unfinished(spec, root)))
    if spec.clusters and spec.accuracy_targets:
      f.write('\n' + time_to_accuracy_table(spec, root))
    simulated = simulated_table(spec, root, table)
    if simulated:
      f.write('\n' + simulated)
  return {'rows': rows, 'table': table, 'csv': csv_path,
          'markdown': md_path, 'plots': plot(spec, root),
          'missing': len(spec.points()) - len(rows)}
