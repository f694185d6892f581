"""Sweeps: points, skipping finished ones, failures, the report."""

import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile

from absl.testing import absltest
import pytest

from hier_avg import config_keys
from hier_avg.tools import cost_model
from hier_avg.tools import sweeps as sweep
from hier_avg.errors import UserError
from hier_avg.run import checkpoint
from tests.support import launcher


def _nested(overrides) -> dict:
  """{'a.b': 1} -> {'a': {'b': 1}}, as a summary's `config` holds it."""
  config = {}
  for key, value in overrides:
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = list(value) if isinstance(value, tuple) else value
  return config


# Two levels of 8 learners (groups of 4), B = 32, as train.py summarizes.
LEVELS = [[4, 4], [8, 16]]
CONFIG = {'hier': {'num_learners': 8, 'algorithm': 'hier'},
          'data': {'batch_size': 32}}


def fake_run(root, point, accuracies, wall=10.0, clock=None):
  """A finished point's files, as train.py writes them; with `clock`
  (simulated seconds per step), a simulated run's (outages cost 3
  learner-steps and skipped one local averaging)."""
  workdir = os.path.join(root, point.name)
  os.makedirs(workdir)
  rows = [dict(step=10 * (i + 1), epoch=0.5 * (i + 1), train_loss=1.0 / (i + 1),
               test_accuracy=a, bytes_averaged_per_learner=100 * (i + 1),
               images_per_s=320.0, local_averagings=2 * (i + 1),
               global_averagings=i + 1, global_drift=0.1 / (i + 1),
               wall_s=wall * (i + 1)) for i, a in enumerate(accuracies)]
  simulated = {}
  if clock is not None:
    for row in rows:
      row.update(simulated_seconds=clock * row['step'], goodput=0.9)
    simulated = dict(simulated_seconds=rows[-1]['simulated_seconds'],
                     goodput=0.9, lost_learner_steps=3, local_skipped=1,
                     global_skipped=0)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)
  # The point's whole config, as train.py records it.
  config = _nested((key, json.loads(value)) for key, value in point.settings)
  for part, values in CONFIG.items():
    config[part] = {**values, **config.get(part, {})}
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump(dict(test_accuracy=accuracies[-1], test_loss=1.0,
                   final_train_loss=rows[-1]['train_loss'], epochs=1.0,
                   steps=20, bytes_averaged_per_learner=3_000_000,
                   global_bytes_per_learner=2_000_000,
                   local_bytes_per_learner=1_000_000,
                   global_averagings=2, local_averagings=1, levels=LEVELS,
                   images_per_s=100.0, wall_s=2 * wall, config=config,
                   **simulated), f)


def _processes_of(root: str) -> list[str]:
  """The processes whose command line names `root`: a sweep's points."""
  found = []
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        if root.encode() in f.read():
          found.append(pid)
    except OSError:
      pass
  return found


class PointsTest(absltest.TestCase):

  def test_variants_times_grid_cells_first(self):
    spec = sweep.SweepSpec(
        'configs/cifar10.py:cpu', overrides={'train.steps': 5},
        variants={'a': {'hier.k1': 1}, 'b': {'hier.k1': 4}},
        grid={'opt.lr': [0.1, 0.2], 'seed': [0, 1]},
        restrict={'b': {'seed': [0]}})
    names = [p.name for p in spec.points()]
    self.assertEqual(names, [
        'a,lr=0.1,seed=0', 'b,lr=0.1,seed=0', 'a,lr=0.1,seed=1',
        'a,lr=0.2,seed=0', 'b,lr=0.2,seed=0', 'a,lr=0.2,seed=1'])
    first = spec.points()[0]
    self.assertEqual(first.group, 'a,lr=0.1')
    self.assertEqual(dict(first.overrides),
                     {'train.steps': 5, 'hier.k1': 1, 'opt.lr': 0.1,
                      'seed': 0})
    self.assertIn('--config.opt.lr=0.1', first.flags())

  def test_a_linked_key_takes_its_grid_keys_value(self):
    spec = sweep.SweepSpec('configs/cifar10.py:cpu', grid={'seed': [0, 3]},
                           linked={'faults.seed': 'seed'})
    self.assertEqual([dict(p.overrides)['faults.seed'] for p in
                      spec.points()], [0, 3])
    # The linked key is a setting of the point, not a part of its name.
    self.assertEqual([p.name for p in spec.points()], ['seed=0', 'seed=3'])
    self.assertIn(('faults.seed', '3'), spec.points()[1].settings)

  def test_bad_specs(self):
    config = 'configs/cifar10.py:cpu'
    with self.assertRaisesRegex(UserError, "point name 'a/b' is no folder "
                                'name'):
      sweep.SweepSpec(config, variants={'a/b': {}}).points()
    with self.assertRaisesRegex(UserError, "share the folder name 'path=_a'"):
      sweep.SweepSpec(config, grid={'data.path': ['/a', '_a']}).points()
    with self.assertRaisesRegex(UserError, 'has no values'):
      sweep.SweepSpec(config, grid={'seed': []}).points()
    with self.assertRaisesRegex(UserError, 'restrict'):
      sweep.SweepSpec(config, variants={'a': {}},
                      restrict={'b': {'seed': [0]}}).points()
    with self.assertRaisesRegex(UserError, r"linked\['faults.seed'\] must "
                                "name a grid key"):
      sweep.SweepSpec(config, grid={'seed': [0]},
                      linked={'faults.seed': 'opt.lr'}).points()
    with self.assertRaisesRegex(UserError, 'c.py.*not found'):
      sweep.SweepSpec('c.py').points()
    with self.assertRaisesRegex(UserError, "sweep config 'configs/cifar10.py:"
                                "bogus' could not be loaded: .*unknown preset"):
      sweep.SweepSpec('configs/cifar10.py:bogus').points()

  def test_a_grid_of_paths_names_its_folders_without_separators(self):
    spec = sweep.SweepSpec('configs/cifar10.py:cpu',
                           grid={'data.path': ['/data/a', '/data/b']})
    self.assertEqual([p.name for p in spec.points()],
                     ['path=_data_a', 'path=_data_b'])
    self.assertIn('--config.data.path=/data/a', spec.points()[0].flags())
    with self.assertRaisesRegex(UserError, 'key=value1,value2'):
      sweep.parse_grid(['hier.k1'])

  def test_parse_grid(self):
    self.assertEqual(sweep.parse_grid(['hier.k1=1,4', 'opt.lr=0.1,1',
                                       'data.name=synthetic']),
                     {'hier.k1': [1, 4], 'opt.lr': [0.1, 1.0],
                      'data.name': ['synthetic']})

  def test_parse_grid_reads_values_as_their_keys_types(self):
    grid = sweep.parse_grid(['data.augment=true,False',
                             'opt.milestones=(30,60),(50, 75)'])
    self.assertEqual(grid, {'data.augment': [True, False],
                            'opt.milestones': [(30, 60), (50, 75)]})
    self.assertIs(grid['data.augment'][0], True)
    with self.assertRaisesRegex(UserError, "data.augment='yes' is not a "
                                'bool like its default True'):
      sweep.parse_grid(['data.augment=yes'])
    with self.assertRaisesRegex(UserError, 'hier.k3 is not a config key; '
                                'did you mean'):
      sweep.parse_grid(['hier.k3=1,2'])


class RunAndReportTest(absltest.TestCase):

  def test_skips_finished_points_and_stops_at_refused_input(self):
    root = tempfile.mkdtemp()
    spec = sweep.SweepSpec(
        'configs/cifar10.py:cpu',
        variants={'done': {}, 'bad': {'opt.lr': -1.0}},
        grid={'seed': [0]})
    done, bad = spec.points()
    fake_run(root, done, [0.5])
    messages = []
    with self.assertRaisesRegex(
        UserError, r'sweep point bad,seed=0 was refused \(error: '
        'opt.lr=-1.0 must be a finite number > 0.*the sweep stopped'):
      sweep.run(spec, root, echo=messages.append)
    self.assertIn('1 finished, 1 to run', messages[0])
    # The finished point was not started again.
    self.assertFalse(os.path.exists(os.path.join(root, 'logs',
                                                 done.name + '.log')))
    result = sweep.report(spec, root)
    self.assertEqual(result['missing'], 1)

  def test_refused_point_stops_its_running_siblings(self):
    root = tempfile.mkdtemp()
    spec = sweep.SweepSpec(
        'configs/cifar10.py:cpu',
        overrides={'data.name': 'synthetic', 'model.name': 'mlp'},
        variants={'long': {'train.steps': 100_000},
                  'bad': {'opt.lr': -1.0}})
    with self.assertRaisesRegex(UserError, 'the sweep stopped'):
      sweep.run(spec, root, parallel=2, echo=lambda _: None)
    self.assertEqual(_processes_of(root), [])

  @pytest.mark.slow
  def test_sigterm_stops_the_sweep_and_its_running_point(self):
    root = tempfile.mkdtemp()
    proc = subprocess.Popen(
        [sys.executable, 'sweep.py', '--config=configs/cifar10.py:cpu',
         f'--root={root}', '--set=data.name=synthetic', '--set=model.name=mlp',
         '--set=train.steps=100000', '--set=train.log_every=4'],
        cwd=launcher.REPO, env=launcher.python_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    launcher.wait_for_step(os.path.join(root, 'base'), 4, [proc])
    proc.terminate()
    stderr = proc.communicate(timeout=120)[1]
    self.assertEqual(proc.returncode, 128 + signal.SIGTERM, stderr)
    self.assertIn('sweep: stopped by SIGTERM', stderr)
    self.assertNotIn('Traceback', stderr)
    self.assertEqual(_processes_of(root), [])
    # The point saved a checkpoint on its way out, to resume from.
    self.assertNotEmpty(checkpoint.saved_steps(
        os.path.join(root, 'base', checkpoint.CHECKPOINT_DIR)))

  def test_a_finished_point_is_reused_only_under_its_whole_config(self):
    # Run with --set=opt.lr=0.2, then without it, or with another preset:
    # the points' folders are the same, their configs are not.
    root = tempfile.mkdtemp()
    with_lr = sweep.SweepSpec('configs/cifar10.py:cpu',
                              overrides={'opt.lr': 0.2},
                              grid={'seed': [0]})
    fake_run(root, with_lr.points()[0], [0.5])
    self.assertTrue(sweep.is_finished(root, with_lr.points()[0]))
    for spec, message in (
        (sweep.SweepSpec('configs/cifar10.py:cpu', grid={'seed': [0]}),
         'finished with opt.lr=0.2, but the sweep now sets 0.05'),
        (sweep.SweepSpec('configs/cifar10.py:sync', overrides={'opt.lr': 0.2},
                         grid={'seed': [0]}),
         'finished with data.augment=False, but the sweep now sets True')):
      for call in (lambda: sweep.run(spec, root, echo=lambda _: None),
                   lambda: sweep.report(spec, root)):
        with self.assertRaisesRegex(UserError, message):
          call()
    self.assertFalse(os.path.exists(os.path.join(root, 'logs')))

  def test_finished_point_with_other_settings_is_refused(self):
    root = tempfile.mkdtemp()
    old = sweep.SweepSpec('configs/cifar10.py:cpu',
                          variants={'hier': {'hier.k1': 4,
                                             'opt.milestones': (1, 2)}})
    fake_run(root, old.points()[0], [0.5])
    self.assertTrue(sweep.is_finished(root, old.points()[0]))
    changed = sweep.SweepSpec('configs/cifar10.py:cpu',
                              variants={'hier': {'hier.k1': 8,
                                                 'opt.milestones': (1, 2)}})
    for call in (lambda: sweep.run(changed, root, echo=lambda _: None),
                 lambda: sweep.report(changed, root)):
      with self.assertRaisesRegex(
          UserError, 'sweep point hier in .* finished with hier.k1=4, but '
          'the sweep now sets 8; use a new --root'):
        call()
    added = sweep.SweepSpec('configs/cifar10.py:cpu',
                            variants={'hier': {'hier.k1': 4, 'opt.lr': 0.2,
                                               'opt.milestones': (1, 2)}})
    with self.assertRaisesRegex(UserError, 'finished with opt.lr=0.05, but '
                                'the sweep now sets 0.2'):
      sweep.report(added, root)
    self.assertFalse(os.path.exists(os.path.join(root, 'logs')))
    # The same data elsewhere, or another layout, keeps the results.
    moved = sweep.SweepSpec('configs/cifar10.py:cpu',
                            overrides={'data.path': '/elsewhere',
                                       'runtime.learner_loop': 'vmap'},
                            variants=old.variants)
    self.assertTrue(sweep.is_finished(root, moved.points()[0]))

  def test_report_means_over_seeds(self):
    root = tempfile.mkdtemp()
    spec = sweep.SweepSpec('configs/cifar10.py:cpu',
                           variants={'x': {}, 'y': {}},
                           grid={'seed': [0, 1]})
    accuracies = {'x,seed=0': 0.5, 'x,seed=1': 0.7, 'y,seed=0': 0.6,
                  'y,seed=1': 0.6}
    for point in spec.points():
      fake_run(root, point, [0.1, accuracies[point.name]])
    result = sweep.report(spec, root)
    table = {e['group']: e for e in result['table']}
    mean, std = table['x']['test_accuracy']
    self.assertAlmostEqual(mean, 0.6)
    self.assertAlmostEqual(std, 0.1414213562, places=6)  # ddof=1
    self.assertEqual(table['y']['test_accuracy'], (0.6, 0.0))
    with open(result['markdown']) as f:
      markdown = f.read()
    self.assertIn('| x | 2 | 1.00 | 0.6000 ± 0.1414 |', markdown)
    self.assertIn('| 3.0 / 2.0 | 1.0 / 2.0 | 2 |', markdown)
    with open(result['csv']) as f:
      self.assertEqual(len(f.readlines()), 5)
    self.assertEqual(
        sorted(os.path.basename(p) for p in result['plots']),
        sorted([p[0] for p in sweep.PLOTS] + [sweep.LOSS_PLOT,
                                               sweep.DRIFT_PLOT]))

  def test_report_models_time_and_lists_unfinished_points(self):
    root = tempfile.mkdtemp()
    spec = sweep.SweepSpec('configs/cifar10.py:cpu',
                           variants={'x': {}, 'y': {}},
                           clusters={'slow': SLOW},
                           accuracy_targets=(0.3, 0.9))
    x, y = spec.points()
    fake_run(root, x, [0.1, 0.5])
    os.makedirs(os.path.join(root, 'logs'))
    with open(os.path.join(root, 'logs', y.name + '.log'), 'w') as f:
      f.write('step 14/390 loss 9.1\nerror: training diverged: non-finite '
              'loss at step 25 (learner 3); lower opt.lr.\n')
    result = sweep.report(spec, root)
    self.assertEqual(result['missing'], 1)
    with open(result['markdown']) as f:
      markdown = f.read()
    rows = sweep.read_rows(os.path.join(root, x.name, 'metrics.jsonl'))
    summary = sweep.read_summary(os.path.join(root, x.name))
    # The only finished run's own compute time is the sweep's.
    self.assertEqual(sweep.sweep_step_s(spec, root),
                     sweep.measured_step_s(rows, summary))
    expected = sweep.modeled_seconds(rows, summary, SLOW,
                                     sweep.measured_step_s(rows,
                                                           summary))[-1]
    self.assertIn(' modeled s (slow) |', markdown)
    # Accuracy 0.1 then 0.5 at rows 1 and 2: 0.3 half way between them.
    times = sweep.modeled_seconds(rows, summary, SLOW,
                                  sweep.measured_step_s(rows, summary))
    self.assertIn(f'| x | {(times[0] + times[1]) / 2:.1f} | — |', markdown)
    self.assertIn(f'| {expected:,.0f} ± 0 |', markdown)
    self.assertIn('- y: training diverged: non-finite loss at step 25 '
                  '(learner 3); lower opt.lr.', markdown)
    self.assertIn(os.path.join(root, sweep.MODELED_PLOT.format('slow')),
                  result['plots'])
    self.assertNotIn('Simulated clock', markdown)

  def test_report_of_simulated_runs(self):
    root = tempfile.mkdtemp()
    spec = sweep.SweepSpec('configs/cifar10.py:cpu',
                           variants={'x': {}, 'y': {}}, grid={'seed': [0, 1]},
                           accuracy_targets=(0.3, 0.6))
    clocks = {'x,seed=0': 1.0, 'x,seed=1': 2.0, 'y,seed=0': None,
              'y,seed=1': None}
    finals = {'x,seed=0': 0.5, 'x,seed=1': 0.7}
    for point in spec.points():
      fake_run(root, point, [0.1, finals.get(point.name, 0.5)],
               clock=clocks[point.name])
    result = sweep.report(spec, root)
    with open(result['markdown']) as f:
      markdown = f.read()
    # Seconds to 0.3: half way between steps 10 and 20 (0.1 -> 0.5) at 1
    # s per step, a quarter of the way (0.1 -> 0.7) at 2 s: 15 and 26.67;
    # 0.6 only by seed 1, at 5/6 of the way: 36.67.
    self.assertIn('| x | 30.0 ± 14.1 | 0.90 | 3 | 1.0 / 0.0 | 20.8 ± 8.2 '
                  '(2/2) | 36.7 ± 0.0 (1/2) |', markdown)
    self.assertNotIn('| y | ', markdown.split('Simulated clock')[1])
    self.assertIn(os.path.join(root, sweep.SIMULATED_PLOT), result['plots'])


# Nodes of 4 devices: free links inside, 1 ms and 1 MB/s between nodes.
SLOW = cost_model.Cluster(intra=cost_model.Link(0.0, 1e9),
                          inter=cost_model.Link(1e-3, 1e6),
                          devices_per_node=4)


class ModeledTimeTest(absltest.TestCase):

  def test_measured_compute_plus_modeled_averagings(self):
    summary = dict(levels=LEVELS, config=CONFIG,
                   local_averagings=6, local_bytes_per_learner=6_000_000,
                   global_averagings=2, global_bytes_per_learner=2_000_000)
    rows = [dict(step=8, images_per_s=320.0, local_averagings=2,
                 global_averagings=0),
            dict(step=16, images_per_s=640.0, local_averagings=3,
                 global_averagings=1),
            dict(step=24, images_per_s=320.0, local_averagings=6,
                 global_averagings=2)]
    # One learner's step: B / median(images/s) = 32 / 320 = 0.1 s.
    self.assertAlmostEqual(sweep.measured_step_s(rows, summary), 0.1)
    # An event moves 1 MB: inside a node 2 * 3/4 * 1e6 / 1e9 = 1.5 ms;
    # among all 8 the same plus a ring of 2 nodes, 2 * 1 ms + 2 * 1/2 * 1 s.
    local, global_ = 1.5e-3, 1.5e-3 + 2e-3 + 1.0
    step_s = 0.25
    expected = [8 * step_s + 2 * local, 16 * step_s + 3 * local + global_,
                24 * step_s + 6 * local + 2 * global_]
    for got, want in zip(sweep.modeled_seconds(rows, summary, SLOW, step_s),
                         expected):
      self.assertAlmostEqual(got, want)

  def test_time_to_accuracy_interpolates_between_evaluations(self):
    x, y = [10.0, 20.0, 30.0], [0.2, 0.5, 0.7]
    self.assertEqual(sweep.time_to_accuracy(x, y, 0.1), 10.0)
    self.assertAlmostEqual(sweep.time_to_accuracy(x, y, 0.6), 25.0)
    self.assertEqual(sweep.time_to_accuracy(x, y, 0.7), 30.0)
    self.assertIsNone(sweep.time_to_accuracy(x, y, 0.8))

  def test_a_run_without_levels_has_no_modeled_time(self):
    summary = dict(config={'hier': {'algorithm': 'asgd'}})
    with self.assertRaisesRegex(UserError, "hier.algorithm='asgd' has none"):
      sweep.modeled_seconds([dict(step=1, images_per_s=1.0)], summary, SLOW,
                            0.1)

  def test_drift_keys_once_each_innermost_first(self):
    root = tempfile.mkdtemp()
    spec = sweep.SweepSpec('configs/cifar10.py:cpu', grid={'seed': [0, 1]})
    for point in spec.points():
      fake_run(root, point, [0.1, 0.2, 0.3])
    with open(os.path.join(root, spec.points()[1].name, 'metrics.jsonl'),
              'a') as f:
      f.write(json.dumps(dict(step=40, local_drift=0.1, level1_drift=0.2,
                              global_spread=0.01, wall_s=40.0)) + '\n')
    self.assertEqual(sweep.drift_keys(spec, root),
                     ['local_drift', 'level1_drift', 'global_drift',
                      'global_spread'])

  def test_report_without_results(self):
    spec = sweep.SweepSpec('configs/cifar10.py:cpu')
    with self.assertRaisesRegex(UserError, 'no finished sweep points'):
      sweep.report(spec, tempfile.mkdtemp())


class SweepFilesTest(absltest.TestCase):
  """Every study in configs/sweeps/ describes runs launch.py accepts."""

  def test_every_point_of_every_sweep_file_is_a_valid_config(self):
    folder = os.path.join(sweep.REPO_ROOT, 'configs', 'sweeps')
    files = sorted(f for f in os.listdir(folder)
                   if f.startswith('cifar10_') and f.endswith('.py'))
    self.assertGreaterEqual(len(files), 4)
    for name in files:
      spec = sweep.load_spec(os.path.join(folder, name))
      path, _, preset = spec.config_path().partition(':')
      module = runpy.run_path(path)
      for point in spec.points():
        with self.subTest(sweep=name, point=point.name):
          config = module['get_config'](preset or None)
          for key, value in point.overrides:
            *parents, leaf = key.split('.')
            node = config
            for part in parents:
              node = node[part]
            node[leaf] = value
          config.data.path = '/data/cifar10'  # What --set gives.
          config_keys.validate(config)


if __name__ == '__main__':
  absltest.main()
