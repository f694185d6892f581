"""launch.py end to end: outputs of a real run, and one-line input errors."""

import concurrent.futures
import glob
import json
import os
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import pytest

import jax
import jax.numpy as jnp
import numpy as np

from hier_avg.tools import cost_model
from hier_avg import models
from tests.support import launcher
from tests.support import outputs

# Every test runs launch.py as a process (BadInputTest one per bad input).
pytestmark = pytest.mark.slow

FAST = launcher.FAST

CLUSTER = cost_model.Cluster(cost_model.Link(1e-6, 1e10),
                             cost_model.Link(1e-5, 1e9), devices_per_node=4)


def cnn_small_bytes() -> int:
  """float32 bytes of cnn_small's parameters, counted independently."""
  variables = jax.eval_shape(
      lambda: models.get_model('cnn_small', 10).init(
          jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  return 4 * sum(x.size for x in jax.tree.leaves(variables))


class EndToEndTest(absltest.TestCase):

  def test_cpu_preset_on_synthetic_data(self):
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    result = launcher.run(
        workdir, *FAST, '--config.train.steps=12',
        '--config.train.eval_every=6', '--config.train.log_every=4',
        '--config.hier.k2=2')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn('step 12/12', result.stderr)
    self.assertIn('ETA', result.stderr)

    rows = outputs.metrics_rows(workdir)
    train = [r for r in rows if 'train_loss' in r]
    evals = [r for r in rows if 'test_accuracy' in r]
    # eval_every=6 is neither a divisor nor a multiple of K1 = 4: it snaps
    # to 8, and the run says so.
    self.assertIn('train.eval_every=6 -> 8', result.stderr)
    self.assertEqual([r['step'] for r in train], [4, 8, 12])
    self.assertEqual([r['step'] for r in evals], [8, 12])
    for r in train:
      for key in ('epoch', 'train_loss', 'local_averagings',
                  'global_averagings', 'bytes_averaged_per_learner',
                  'images_per_s', 'wall_s', 'learning_rate'):
        self.assertIn(key, r)
    # K1 = 4, K2 = 2: local after steps 4 and 12, global after step 8.
    counts = [(r['local_averagings'], r['global_averagings']) for r in train]
    self.assertEqual(counts, [(1, 0), (1, 1), (2, 1)])
    one_event = train[0]['bytes_averaged_per_learner']
    self.assertGreater(one_event, 0)
    self.assertEqual(train[-1]['bytes_averaged_per_learner'], 3 * one_event)

    summary = outputs.summary(workdir)
    self.assertEqual(summary['test_accuracy'], evals[-1]['test_accuracy'])
    # 16 steps an epoch: the last epoch's mean loss is all 12 steps'.
    self.assertEqual(summary['final_train_loss_steps'], [1, 12])
    self.assertAlmostEqual(summary['final_train_loss'],
                           np.mean([r['train_loss'] for r in train]),
                           places=5)
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
    result = launcher.run(workdir, *FAST, '--config.train.steps=4',
                          '--config.model.dtype=bfloat16')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    summary = outputs.summary(workdir)
    self.assertTrue(np.isfinite(summary['final_train_loss']))
    # One averaging of float32 parameters: 4 bytes each.
    self.assertEqual(summary['bytes_averaged_per_learner'], cnn_small_bytes())


# (name, overrides, expected message)
# A run on an image folder of 2 classes (FOLDER_TRAIN images each, 32x32):
# P = 8 learners of B = 8 take one step an epoch.
FOLDER = ('--config.data.name=folder', '--config.data.batch_size=8',
          '--config.train.log_every=1')
FOLDER_TRAIN = 40

BAD_INPUTS = (
    ('p_not_divisible_by_s', ('--config.hier.num_learners=10',),
     'hier.num_learners=10 is not divisible by hier.group_size=4'),
    ('k1_below_1', ('--config.hier.k1=0',), 'hier.k1=0 must be'),
    ('unknown_pack', ('--config.runtime.learner_loop=scan',),
     "unknown runtime.learner_loop='scan'; choose one of"),
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
    ('imagenet_not_prepared', ('--config.data.name=imagenet2012',
                               '--config.data.path={empty}'),
     "tfds data set 'imagenet2012' is not prepared in"),
    ('iid_sampling_of_a_stream', ('--config.data.name=imagenet2012',
                                  '--config.data.sampling=iid'),
     "data.sampling='iid' needs random access"),
    ('imagenet_stem_on_cnn_small', ('--config.model.stem=imagenet',),
     "model.stem='imagenet' applies to resnet18"),
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
    ('zero_outer_lr', ('--config.hier.outer_lr=0.0',),
     'hier.outer_lr=0.0 must be'),
    ('unknown_batch_stats_policy', ('--config.hier.batch_stats=sum',),
     "unknown hier.batch_stats='sum'; choose one of"),
    ('unknown_algorithm', ('--config.hier.algorithm=gossip',),
     "unknown hier.algorithm='gossip'; choose one of"),
    ('asgd_with_outer_optimizer', ('--config.hier.algorithm=asgd',
                                   '--config.hier.outer_lr=0.7'),
     'has no global averaging for an outer optimizer'),
    ('unknown_outer_lr_schedule', ('--config.hier.outer_lr_schedule=step',),
     "unknown hier.outer_lr_schedule='step'; choose one of"),
    ('negative_outer_warmup', ('--config.hier.outer_warmup=-2',),
     'hier.outer_warmup=-2 must be'),
    ('outer_cosine_with_adaptive_periods',
     ('--config.hier.outer_lr_schedule=cosine',
      '--config.hier.period_schedule=adaptive'),
     "which hier.period_schedule='adaptive' decides during training"),
    # Needs the run's length: refused after the data is loaded, still
    # before the workdir is touched.
    ('outer_warmup_longer_than_the_run',
     FAST + ('--config.hier.outer_lr_schedule=cosine',
             '--config.hier.outer_warmup=1000'),
     "hier.outer_warmup=1000 must be below the run's"),
    ('workdir_is_file', ('--workdir={file}',), 'is a file'),
    ('workdir_under_a_file', FAST + ('--workdir={file}/run',),
     'cannot write to'),
    ('no_test_split', ('--config.data.name=folder',
                       '--config.data.path={no_test}'),
     'has no test/ subfolder'),
    ('unreadable_image', ('--config.data.name=folder',
                          '--config.data.path={bad_image}'),
     'cannot read image'),
    ('mixed_image_sizes', ('--config.data.name=folder',
                           '--config.data.path={mixed_sizes}'),
     'have different sizes'),
    ('zero_learners', ('--config.hier.num_learners=0',),
     'hier.num_learners=0 must be'),
    ('zero_batch', ('--config.data.batch_size=0',),
     'data.batch_size=0 must be'),
    ('momentum_one', ('--config.opt.momentum=1.0',),
     'opt.momentum=1.0 must be a number in [0, 1)'),
    ('negative_weight_decay', ('--config.opt.weight_decay=-1e-4',),
     'opt.weight_decay=-0.0001 must be'),
    ('unknown_schedule', ('--config.opt.schedule=linear',),
     "unknown opt.schedule='linear'"),
    ('no_length', ('--config.train.steps=0', '--config.train.epochs=0'),
     'set train.steps or train.epochs'),
    ('log_every_zero', ('--config.train.log_every=0',),
     'train.log_every=0 must be'),
    ('negative_checkpoint_every', ('--config.train.checkpoint_every=-5',),
     'train.checkpoint_every=-5 must be'),
    ('keep_no_checkpoints', ('--config.train.keep_checkpoints=0',),
     'train.keep_checkpoints=0 must be'),
    ('garbage_checkpoints', FAST + ('--workdir={garbage_checkpoints}',),
     'no checkpoint in'),
    # Values that pass a type check and would overflow or exhaust memory
    # later.
    ('milestones_infinite', ('--config.opt.milestones=(1e400,)',),
     'opt.milestones=(inf,) must be a tuple of finite numbers'),
    ('period_milestones_past_the_step_counter',
     FAST + ('--config.hier.period_schedule=step',
             '--config.hier.period_milestones=(1e308,)',
             '--config.hier.period_factors=(2,)'),
     'hier.period_milestones=(1e+308,) is inf steps'),
    ('warmup_past_the_step_counter',
     FAST + ('--config.opt.warmup_epochs=1e308',),
     'opt.warmup_epochs=1e+308 is'),
    ('epochs_past_the_step_counter',
     FAST + ('--config.train.steps=0', '--config.train.epochs=1e308'),
     "train.epochs=1e+308 is inf steps at 16 steps an epoch, past the most "
     'a run counts'),
    ('seed_past_32_bits', ('--config.seed=9223372036854775808',),
     'seed=9223372036854775808 must be an integer in [0, 4294967295]'),
    ('synthetic_images_larger_than_memory',
     FAST + ('--config.data.synthetic_image_size=100000',),
     'synthetic data of 1280 images of 100000x100000x3 takes'),
    ('recompute_more_images_than_the_data',
     FAST + ('--config.hier.batch_stats=recompute',
             '--config.hier.recompute_batches=100000'),
     'need 800000 training examples per process, more than the 1024 there '
     'are; lower hier.recompute_batches'),
    ('asgd_state_larger_than_memory',
     FAST + ('--config.hier.algorithm=asgd', '--config.hier.staleness=100000'),
     'the training state takes'),
    # The launcher's own flags.
    ('config_file_missing', ('--config=configs/nothere.py',),
     "--config=configs/nothere.py could not be loaded: [Errno 2] No such "
     "file or directory: 'configs/nothere.py'"),
    ('config_preset_unknown', ('--config=configs/cifar10.py:bogus',),
     "unknown preset 'bogus'; choose one of"),
    ('too_many_cpu_devices', ('--cpu_devices=32768',),
     'flag --cpu_devices=32768: 32768 is not an integer in the range '
     '[1, 1024]'),
    # A workdir whose layout a run cannot use, or whose files were edited
    # or damaged by hand.
    ('checkpoints_is_a_file', FAST + ('--workdir={checkpoints_file}',),
     'checkpoints is a file, where a run keeps its checkpoints folder'),
    ('metrics_is_a_folder', FAST + ('--workdir={metrics_folder}',),
     'metrics.jsonl is a folder, where a run keeps its metrics.jsonl file'),
    ('finished_run_without_checkpoints',
     FAST + ('--workdir={no_checkpoints}', '--config.seed=1'),
     'holds a finished run (summary.json, final_model.msgpack) but no '
     'checkpoint in'),
    ('metrics_row_without_a_step',
     FAST + ('--workdir={row_without_step}', '--config.train.steps=6'),
     'metrics.jsonl line 1 is not a metrics row (its step is None'),
    ('metrics_row_a_bare_number',
     FAST + ('--workdir={row_a_number}', '--config.train.steps=6'),
     'is not a metrics row (not a JSON object)'),
    ('metrics_row_with_a_string_step',
     FAST + ('--workdir={row_string_step}', '--config.train.steps=6'),
     "is not a metrics row (its step is '2', not an integer)"),
    ('metrics_rows_without_wall_s',
     FAST + ('--workdir={rows_without_wall_s}', '--config.train.steps=6'),
     'is not a metrics row (its wall_s is None, not a number)'),
    ('summary_truncated',
     FAST + ('--workdir={summary_truncated}', '--config.train.steps=4'),
     'summary.json is damaged (not JSON'),
    ('records_without_fingerprints',
     FAST + ('--workdir={records_without_fingerprints}',
             '--config.train.steps=6'),
     'no checkpoint in'),
    ('records_that_are_lists',
     FAST + ('--workdir={records_lists}', '--config.train.steps=6'),
     'no checkpoint in'),
    ('another_data_set_under_a_resume',
     FOLDER + ('--workdir={folder_run}', '--config.data.path={other_folder}',
               '--config.train.steps=4'),
     'was made on 80 training examples of 2 classes, images 32x32x3, but '
     'data.path='),
)


def noisy_images(root, train_per_class, test_per_class=4):
  """`root/{train,test}/{a,b}/*.png`: 32x32 images of random pixels (each
  channel varies: a data set normalization can divide by)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split, count in (('train', train_per_class), ('test', test_per_class)):
    for cls in ('a', 'b'):
      os.makedirs(os.path.join(root, split, cls), exist_ok=True)
      for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(
            os.path.join(root, split, cls, f'{i}.png'))
  return root


def make_images(root, sizes_by_split, garbage=False):
  """`root/<split>/a/*.png` test images, or one garbage .jpg in train."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for split, sizes in sizes_by_split.items():
    for cls in ('a', 'b'):
      os.makedirs(os.path.join(root, split, cls), exist_ok=True)
      for i, size in enumerate(sizes):
        Image.new('RGB', (size, size), (i * 40, 0, 0)).save(
            os.path.join(root, split, cls, f'{i}.png'))
  if garbage:
    with open(os.path.join(root, 'train', 'a', 'broken.jpg'), 'wb') as f:
      f.write(b'not a jpeg')
  return root


class BadInputTest(parameterized.TestCase):
  """Each bad input: one `error:` line, exit 2, workdir exactly as it was."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # A folder of its own: the fixed names below must not meet those of
    # another test session on the same machine.
    os.makedirs(absltest.get_default_test_tmpdir(), exist_ok=True)
    cls.tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
    cls.empty = os.path.join(cls.tmp, 'empty_data')
    os.makedirs(cls.empty, exist_ok=True)
    cls.file = os.path.join(cls.tmp, 'a_file')
    with open(cls.file, 'w') as f:
      f.write('keep me')
    data = os.path.join(cls.tmp, 'data')
    fixtures = dict(
        empty=cls.empty, file=cls.file,
        no_test=make_images(os.path.join(data, 'no_test'), {'train': [8]}),
        bad_image=make_images(os.path.join(data, 'bad_image'),
                              {'train': [8], 'test': [8]}, garbage=True),
        mixed_sizes=make_images(os.path.join(data, 'mixed'),
                                {'train': [8, 12], 'test': [8]}),
        garbage_checkpoints=os.path.join(cls.tmp, 'garbage_checkpoints'))
    broken = os.path.join(fixtures['garbage_checkpoints'], 'checkpoints', '4')
    os.makedirs(broken, exist_ok=True)
    with open(os.path.join(broken, '_CHECKPOINT_METADATA'), 'w') as f:
      f.write('{truncated')
    with open(os.path.join(fixtures['garbage_checkpoints'],
                           'metrics.jsonl'), 'w') as f:
      f.write('{"step": 4}\n')
    fixtures.update(cls._damaged_runs(data))

    def run(case):
      name, overrides, _ = case
      workdir = os.path.join(cls.tmp, 'bad_' + name)
      # Every workdir already holds something that must survive.
      os.makedirs(workdir, exist_ok=True)
      with open(os.path.join(workdir, 'notes.txt'), 'w') as f:
        f.write('keep me')
      overrides = [o.format(**fixtures) for o in overrides]
      targets = [o.split('=', 1)[1] for o in overrides
                 if o.startswith('--workdir=')] or [workdir]
      before = {t: outputs.snapshot(t) for t in targets if os.path.isdir(t)}
      result = launcher.run(workdir, *overrides)
      after = {t: outputs.snapshot(t) for t in before}
      return name, (result, before, after)

    # Each case is a fresh process; two at a time keeps the suite quick.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      cls.results = dict(pool.map(run, BAD_INPUTS))

  @classmethod
  def _damaged_runs(cls, data: str) -> dict:
    """Workdirs of real runs, each changed as a user might by hand."""
    tmp = cls.tmp
    fixtures = {'checkpoints_file': os.path.join(tmp, 'checkpoints_file'),
                'metrics_folder': os.path.join(tmp, 'metrics_folder')}
    os.makedirs(os.path.join(fixtures['metrics_folder'], 'metrics.jsonl'))
    os.makedirs(fixtures['checkpoints_file'])
    with open(os.path.join(fixtures['checkpoints_file'], 'checkpoints'),
              'w') as f:
      f.write('keep me')
    # 4 steps, a row every step, checkpoints at 2 and 4, then 4 more.
    cls.finished_run = os.path.join(tmp, 'run')
    folder_run = os.path.join(tmp, 'folder_run')
    cls.folder = noisy_images(os.path.join(data, 'folder'), FOLDER_TRAIN)
    finished = [launcher.run(cls.finished_run, *FAST, '--config.train.steps=4',
                             '--config.train.log_every=1',
                             '--config.train.checkpoint_every=2'),
                launcher.run(folder_run, *FOLDER,
                             f'--config.data.path={cls.folder}',
                             '--config.train.steps=2')]
    for result in finished:
      assert result.returncode == 0, result.stderr[-2000:]
    fixtures['folder_run'] = folder_run
    fixtures['other_folder'] = noisy_images(
        os.path.join(data, 'other_folder'), FOLDER_TRAIN + 8)

    def damaged(name, change):
      workdir = os.path.join(tmp, name)
      shutil.copytree(cls.finished_run, workdir)
      change(workdir)
      fixtures[name] = workdir

    def rows(*lines):
      def change(workdir):
        with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
          f.writelines(json.dumps(line) + '\n' for line in lines)
      return change

    def records(record):
      def change(workdir):
        for path in glob.glob(os.path.join(workdir, 'checkpoints', '*',
                                           'record', 'metadata')):
          with open(path, 'w') as f:
            json.dump(record, f)
      return change

    def truncate(name, size):
      def change(workdir):
        with open(os.path.join(workdir, name), 'r+') as f:
          f.truncate(size)
      return change

    def empty_checkpoints(workdir):
      shutil.rmtree(os.path.join(workdir, 'checkpoints'))
      os.makedirs(os.path.join(workdir, 'checkpoints'))

    damaged('no_checkpoints', empty_checkpoints)
    damaged('row_without_step', rows({'wall_s': 1.0}))
    damaged('row_a_number', rows({'step': 1, 'wall_s': 1.0}, 7))
    damaged('row_string_step', rows({'step': '2', 'wall_s': 1.0}))
    damaged('rows_without_wall_s', rows({'step': 1}, {'step': 2}))
    damaged('summary_truncated', truncate('summary.json', 40))
    damaged('records_without_fingerprints', records({'step': 4}))
    damaged('records_lists', records([4]))
    return fixtures

  def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_run_ends(self):
    # Before: the newest checkpoint unreadable, every rerun trained to its
    # step and then failed to save it again.
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    shutil.copytree(self.finished_run, workdir)
    newest = os.path.join(workdir, 'checkpoints', '4')
    for path in glob.glob(os.path.join(newest, 'state', '**', '*'),
                          recursive=True):
      if os.path.isfile(path):
        with open(path, 'r+b') as f:
          f.truncate(0)
    result = launcher.run(workdir, *FAST, '--config.train.steps=6',
                          '--config.train.log_every=1',
                          '--config.train.checkpoint_every=2')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn(f'moved the unreadable checkpoint of step 4 to {newest}'
                  '.unreadable', result.stderr)
    self.assertTrue(os.path.isdir(newest + '.unreadable'))
    # Resumed from 2, it saved 4 and 6 anew and finished.
    self.assertIn('resuming at step 2', result.stderr)
    self.assertTrue(os.path.isdir(newest))
    self.assertEqual(outputs.summary(workdir)['steps'], 6)

  def test_the_table_is_large(self):
    self.assertGreaterEqual(len(BAD_INPUTS), 25)

  @parameterized.named_parameters(
      dict(testcase_name=name, case=name, message=message)
      for name, _, message in BAD_INPUTS)
  def test_one_line_error(self, case, message):
    result, before, after = self.results[case]
    self.assertEqual(result.returncode, 2, result.stderr[-2000:])
    self.assertNotIn('Traceback', result.stderr)
    errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
    self.assertLen(errors, 1, result.stderr[-2000:])
    self.assertIn(message, errors[0])
    self.assertEqual(after, before)
    with open(self.file) as f:
      self.assertEqual(f.read(), 'keep me')

  def test_existing_run_is_left_alone(self):
    workdir = self.create_tempdir().full_path
    with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
      f.write('{"step": 1}\n')
    before = outputs.snapshot(workdir)
    result = launcher.run(workdir, *FAST)
    self.assertEqual(result.returncode, 2)
    self.assertIn('already holds a run', result.stderr)
    self.assertEqual(outputs.snapshot(workdir), before)


if __name__ == '__main__':
  absltest.main()
