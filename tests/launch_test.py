"""launch.py end to end: outputs of a real run, and one-line input errors."""

import concurrent.futures
import glob
import json
import os
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized

import jax
import jax.numpy as jnp
import numpy as np

from hier_avg import cost_model
from hier_avg import models
from tests import conftest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ('--config.data.name=synthetic',
        '--config.data.synthetic_train_examples=1024',
        '--config.data.synthetic_test_examples=256',
        '--config.data.batch_size=8')


def launch(workdir, *overrides, config='configs/cifar10.py:cpu', timeout=300):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count='
             f'{conftest.NUM_CPU_DEVICES}', PYTHONPATH=REPO)
  return subprocess.run(
      [sys.executable, os.path.join(REPO, 'launch.py'),
       f'--config={os.path.join(REPO, config)}', f'--workdir={workdir}',
       *overrides], capture_output=True, text=True, env=env, timeout=timeout,
      cwd=REPO)


CLUSTER = cost_model.Cluster(cost_model.Link(1e-6, 1e10),
                             cost_model.Link(1e-5, 1e9), devices_per_node=4)


def cnn_small_bytes() -> int:
  """float32 bytes of cnn_small's parameters, counted independently."""
  variables = jax.eval_shape(
      lambda: models.get_model('cnn_small', 10).init(
          jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  return 4 * sum(x.size for x in jax.tree.leaves(variables))


def snapshot(path):
  """Every file under `path` with its bytes (to prove nothing changed)."""
  files = {}
  for root, _, names in os.walk(path):
    for name in names:
      full = os.path.join(root, name)
      with open(full, 'rb') as f:
        files[os.path.relpath(full, path)] = f.read()
  return files


class EndToEndTest(absltest.TestCase):

  def test_cpu_preset_on_synthetic_data(self):
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    result = launch(workdir, *FAST, '--config.train.steps=12',
                    '--config.train.eval_every=6', '--config.train.log_every=4',
                    '--config.hier.k2=2')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn('step 12/12', result.stderr)
    self.assertIn('ETA', result.stderr)

    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      rows = [json.loads(line) for line in f]
    train = [r for r in rows if 'train_loss' in r]
    evals = [r for r in rows if 'test_accuracy' in r]
    self.assertEqual([r['step'] for r in train], [4, 6, 8, 12])
    self.assertEqual([r['step'] for r in evals], [6, 12])
    for r in train:
      for key in ('epoch', 'train_loss', 'local_averagings',
                  'global_averagings', 'bytes_averaged_per_learner',
                  'images_per_s', 'wall_s', 'learning_rate'):
        self.assertIn(key, r)
    # K1 = 4, K2 = 2: local after steps 4 and 12, global after step 8.
    counts = [(r['local_averagings'], r['global_averagings']) for r in train]
    self.assertEqual(counts, [(1, 0), (1, 0), (1, 1), (2, 1)])
    one_event = train[0]['bytes_averaged_per_learner']
    self.assertGreater(one_event, 0)
    self.assertEqual(train[-1]['bytes_averaged_per_learner'], 3 * one_event)

    with open(os.path.join(workdir, 'summary.json')) as f:
      summary = json.load(f)
    self.assertEqual(summary['test_accuracy'], evals[-1]['test_accuracy'])
    self.assertEqual(summary['final_train_loss'], train[-1]['train_loss'])
    self.assertEqual(summary['local_averagings'], 2)
    self.assertEqual(summary['global_averagings'], 1)
    self.assertGreater(summary['images_per_s'], 0)
    self.assertEqual(summary['config']['hier']['k2'], 2)
    # Communication per level: 8 learners on 2x4 devices, all state float32,
    # so one all-reduce per event; bytes as the cost model predicts them.
    self.assertEqual((summary['local_collectives'],
                      summary['global_collectives']), (2, 1))
    predicted = cost_model.predict(
        CLUSTER, cost_model.hier(4, 4, 2), 8, 12,
        model_bytes=cnn_small_bytes(), step_s=0.1)
    self.assertEqual(summary['local_bytes_per_learner'],
                     predicted.local_bytes_per_learner)
    self.assertEqual(summary['global_bytes_per_learner'],
                     predicted.global_bytes_per_learner)
    self.assertEqual(summary['bytes_averaged_per_learner'],
                     3 * cnn_small_bytes())
    self.assertTrue(os.path.exists(os.path.join(workdir, 'curves.png')))
    self.assertTrue(glob.glob(os.path.join(workdir, 'events.out.tfevents*')))


class MixedPrecisionTest(absltest.TestCase):

  def test_bfloat16_run_averages_float32_state(self):
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    result = launch(workdir, *FAST, '--config.train.steps=4',
                    '--config.model.dtype=bfloat16')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    with open(os.path.join(workdir, 'summary.json')) as f:
      summary = json.load(f)
    self.assertTrue(np.isfinite(summary['final_train_loss']))
    # One averaging of float32 parameters: 4 bytes each.
    self.assertEqual(summary['bytes_averaged_per_learner'], cnn_small_bytes())


# (name, overrides, expected message)
BAD_INPUTS = (
    ('p_not_divisible_by_s', ('--config.hier.num_learners=10',),
     'hier.num_learners=10 is not divisible by hier.group_size=4'),
    ('k1_below_1', ('--config.hier.k1=0',), 'hier.k1=0 must be'),
    ('unknown_pack', ('--config.mesh.pack=scan',),
     "unknown mesh.pack='scan'; choose one of"),
    ('unknown_conv', ('--config.model.conv=fft',),
     "unknown model.conv='fft'; choose one of"),
    ('unknown_dtype', ('--config.model.dtype=float16',),
     "unknown model.dtype='float16'; choose one of"),
    ('half_multi_process_flags', ('--num_processes=2',),
     'a multi-process run needs all of --coordinator_address'),
    ('k2_below_1', ('--config.hier.k2=-1',), 'hier.k2=-1 must be'),
    ('mesh_not_dividing', ('--config.mesh.node_devices=3',),
     'mesh.node_devices=3 does not divide'),
    ('more_devices_than_exist', ('--config.hier.num_learners=16',
                                 '--config.hier.group_size=16',
                                 '--config.mesh.local_devices=16'),
     'asks for 16 devices but only 8 exist'),
    ('unknown_model', ('--config.model.name=resnet1000',),
     "unknown model.name='resnet1000'"),
    ('unknown_data', ('--config.data.name=imagenet9',),
     "unknown data.name='imagenet9'"),
    ('missing_folder', ('--config.data.name=folder',
                        '--config.data.path=/nonexistent/cifar'),
     'data.path=/nonexistent/cifar does not exist'),
    ('empty_folder', ('--config.data.name=folder',
                      '--config.data.path={empty}'), 'has no train/'),
    ('batch_larger_than_data', FAST + ('--config.data.batch_size=5000',),
     'data.batch_size=5000 is larger than'),
    ('bad_sampling', ('--config.data.sampling=shuffle',),
     "unknown data.sampling='shuffle'"),
    ('bad_lr', ('--config.opt.lr=-0.1',), 'opt.lr=-0.1 must be'),
    ('average_without_params', ("--config.hier.average=('batch_stats',)",),
     "hier.average=('batch_stats',) must include 'params'"),
    ('workdir_is_file', ('--workdir={file}',), 'is a file'),
)


class BadInputTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = absltest.get_default_test_tmpdir()
    cls.empty = os.path.join(cls.tmp, 'empty_data')
    os.makedirs(cls.empty, exist_ok=True)
    cls.file = os.path.join(cls.tmp, 'a_file')
    with open(cls.file, 'w') as f:
      f.write('keep me')

    def run(case):
      name, overrides, _ = case
      workdir = os.path.join(cls.tmp, 'bad_' + name)
      overrides = [o.format(empty=cls.empty, file=cls.file)
                   for o in overrides]
      return name, launch(workdir, *overrides)

    # Each case is a fresh process; two at a time keeps the suite quick.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      cls.results = dict(pool.map(run, BAD_INPUTS))

  @parameterized.named_parameters(*BAD_INPUTS)
  def test_one_line_error(self, overrides, message):
    del overrides
    result = self.results[self._testMethodName.split('test_one_line_error_',
                                                     1)[1]]
    self.assertEqual(result.returncode, 2, result.stderr[-2000:])
    self.assertNotIn('Traceback', result.stderr)
    errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
    self.assertLen(errors, 1, result.stderr[-2000:])
    self.assertIn(message, errors[0])
    with open(self.file) as f:
      self.assertEqual(f.read(), 'keep me')

  def test_existing_run_is_left_alone(self):
    workdir = self.create_tempdir().full_path
    with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
      f.write('{"step": 1}\n')
    before = snapshot(workdir)
    result = launch(workdir, *FAST)
    self.assertEqual(result.returncode, 2)
    self.assertIn('already holds a run', result.stderr)
    self.assertEqual(snapshot(workdir), before)


if __name__ == '__main__':
  absltest.main()
