"""The config-key registry: defaults, checks, resume and sweep flags, docs."""

import os
import re

from absl.testing import absltest
from absl.testing import parameterized
import ml_collections

from configs import cifar10, default, imagenet, mnist
from hier_avg import config_keys
from hier_avg import errors
from hier_avg.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A count's check: at least 1, at most what the int32 step counter holds.
COUNT_FROM_1 = r'an integer in \[1, 2147483647\]'


def _with(**overrides):
  """The default config with 'section__key'=value overrides, of any type."""
  config = ml_collections.ConfigDict(default.get_config().to_dict(),
                                     type_safe=False)
  for name, value in overrides.items():
    section, _, key = name.rpartition('__')
    (config[section] if section else config)[key] = value
  return config


class RegistryTest(parameterized.TestCase):

  def test_default_config_is_the_registry(self):
    self.assertEqual(config_keys.flatten(default.get_config()),
                     {key.name: key.default for key in config_keys.KEYS})

  def test_every_key_is_declared_once(self):
    names = [key.name for key in config_keys.KEYS]
    self.assertLen(set(names), len(names))
    for name in names:
      self.assertIn(name.rpartition('.')[0], config_keys.SECTIONS)

  @parameterized.parameters(
      (cifar10, ''), (cifar10, 'kavg'), (cifar10, 'sync'), (cifar10, 'cpu'),
      (imagenet, ''), (imagenet, 'kavg'), (mnist, 'fashion_mnist'))
  def test_presets_are_valid(self, module, preset):
    config_keys.validate(module.get_config(preset or None))

  @parameterized.named_parameters(
      ('unknown_model', {'model__name': 'vgg99'},
       "unknown model.name='vgg99'; choose one of"),
      ('stem_on_vgg', {'model__name': 'vgg16', 'model__stem': 'imagenet'},
       "model.stem='imagenet' applies to resnet18, resnet34, resnet50 only"),
      ('unknown_schedule', {'opt__schedule': 'linear'},
       "unknown opt.schedule='linear'"),
      ('nesterov_without_momentum',
       {'opt__momentum': 0.0, 'opt__nesterov': True},
       'opt.nesterov=True needs opt.momentum > 0'),
      ('unknown_sampling', {'data__sampling': 'shuffled'},
       "unknown data.sampling='shuffled'"),
      ('k1_zero', {'hier__k1': 0}, f'hier.k1=0 must be {COUNT_FROM_1}'),
      ('k2_zero', {'hier__k2': 0}, f'hier.k2=0 must be {COUNT_FROM_1}'),
      ('k1_past_int32', {'hier__k1': 2**31},
       f'hier.k1=2147483648 must be {COUNT_FROM_1}'),
      ('k1_negative', {'hier__k1': -2}, 'hier.k1=-2 must be an integer'),
      ('k1_fractional', {'hier__k1': 2.5}, 'hier.k1=2.5 must be an integer'),
      ('k2_bool', {'hier__k2': True}, 'hier.k2=True must be an integer'),
      ('zero_group', {'hier__group_size': 0},
       f'hier.group_size=0 must be {COUNT_FROM_1}'),
      ('p_not_divisible', {'hier__num_learners': 10},
       'hier.num_learners=10 is not divisible by hier.group_size=4'),
      ('mesh_zero', {'mesh__node_devices': 0},
       'mesh.node_devices=0 must be -1'),
      ('one_synthetic_class', {'data__synthetic_num_classes': 1},
       r'data.synthetic_num_classes=1 must be an integer in \[2, 2147483647\]'),
      ('image_size_zero', {'data__image_size': 0}, 'data.image_size=0'),
      ('unknown_learner_loop', {'runtime__learner_loop': 'scan'},
       "unknown runtime.learner_loop='scan'"),
      ('unrolled_steps_zero', {'runtime__max_unrolled_steps': 0},
       f'runtime.max_unrolled_steps=0 must be {COUNT_FROM_1}'),
      ('milestones_text', {'opt__milestones': ('a',)},
       'opt.milestones=.* must be a tuple of finite numbers'),
      ('augment_text', {'data__augment': 'yes'},
       "data.augment='yes' must be True or False"),
      ('unknown_placement', {'data__placement': 'gpu'},
       "unknown data.placement='gpu'; choose one of 'auto', 'device', "
       "'host'"),
      ('memory_fraction_zero', {'data__device_memory_fraction': 0.0},
       r'data.device_memory_fraction=0.0 must be a number in \(0, 1\]'),
      ('memory_fraction_over_one', {'data__device_memory_fraction': 1.5},
       'data.device_memory_fraction=1.5 must be a number in'),
      ('memory_fraction_text', {'data__device_memory_fraction': 'half'},
       "data.device_memory_fraction='half' must be a number in"),
      ('asgd_outer_momentum',
       {'hier__algorithm': 'asgd', 'hier__outer_momentum': 0.5},
       'has no global averaging for an outer optimizer'),
      ('no_length', {'train__steps': 0, 'train__epochs': 0.0},
       'set train.steps or train.epochs'),
      ('infinite_epochs', {'train__epochs': float('inf')},
       'train.epochs=inf must be a finite number'),
      ('infinite_warmup', {'opt__warmup_epochs': float('inf')},
       'opt.warmup_epochs=inf must be a finite number'),
      ('negative_decay', {'opt__decay_factor': -0.1},
       'opt.decay_factor=-0.1 must be a finite number >= 0'),
      ('outer_nesterov_without_momentum', {'hier__outer_nesterov': True},
       'hier.outer_nesterov=True needs hier.outer_momentum > 0'),
      ('unknown_outer_lr_schedule', {'hier__outer_lr_schedule': 'linear'},
       "unknown hier.outer_lr_schedule='linear'; choose one of 'constant', "
       "'cosine'"),
      ('negative_outer_warmup', {'hier__outer_warmup': -1},
       r'hier.outer_warmup=-1 must be an integer in \[0, 2147483647\]'),
      ('negative_outer_lr_final', {'hier__outer_lr_final': -0.1},
       'hier.outer_lr_final=-0.1 must be a finite number >= 0'),
      ('outer_cosine_with_adaptive_periods',
       {'hier__outer_lr_schedule': 'cosine',
        'hier__period_schedule': 'adaptive'},
       "hier.outer_lr_schedule='cosine' needs the run's number of outer "
       "steps, which hier.period_schedule='adaptive' decides"),
      ('asgd_outer_cosine',
       {'hier__algorithm': 'asgd', 'hier__outer_lr_schedule': 'cosine'},
       'has no global averaging for an outer optimizer'),
      ('asgd_outer_warmup',
       {'hier__algorithm': 'asgd', 'hier__outer_warmup': 3},
       "leave .*hier.outer_lr_schedule='constant' and hier.outer_warmup=0"),
  )
  def test_bad_values_get_one_line(self, overrides, message):
    with self.assertRaisesRegex(UserError, message) as e:
      config_keys.validate(_with(**overrides))
    self.assertNotIn('\n', str(e.exception))

  def test_unknown_key_is_refused(self):
    config = default.get_config()
    config.hier.k3 = 2
    with self.assertRaisesRegex(UserError, 'hier.k3 is not a config key'):
      config_keys.validate(config)

  def test_renamed_key_points_to_its_new_name(self):
    config = default.get_config()
    config.mesh.pack = 'vmap'
    with self.assertRaisesRegex(UserError, 'mesh.pack is now called '
                                'runtime.learner_loop'):
      config_keys.validate(config)

  def test_missing_key_is_refused(self):
    config = default.get_config()
    del config.train['log_every']
    with self.assertRaisesRegex(UserError, 'the config has no '
                                'train.log_every'):
      config_keys.validate(config)


class ParseTest(absltest.TestCase):

  def test_values_take_their_defaults_type(self):
    self.assertIs(config_keys.parse('data.augment', 'TRUE'), True)
    self.assertEqual(config_keys.parse('opt.lr', '1'), 1.0)
    self.assertIsInstance(config_keys.parse('opt.lr', '1'), float)
    self.assertEqual(config_keys.parse('hier.k1', '8'), 8)
    self.assertEqual(config_keys.parse('opt.milestones', '(30, 60)'),
                     (30, 60))
    self.assertEqual(config_keys.parse('opt.milestones', '30'), (30,))
    self.assertEqual(config_keys.parse('data.name', 'mnist'), 'mnist')
    with self.assertRaisesRegex(UserError, "hier.k1='two' is not a int"):
      config_keys.parse('hier.k1', 'two')


class FlagsTest(absltest.TestCase):

  def test_fingerprint_holds_the_keys_a_resume_must_keep(self):
    fingerprint = config_keys.fingerprint(default.get_config())
    self.assertEqual(set(fingerprint), set(config_keys.names(
        lambda key: not key.resumable)))
    self.assertIn('hier.k1', fingerprint)
    self.assertNotIn('train.steps', fingerprint)
    self.assertEqual(fingerprint['opt.milestones'], [50, 75])  # As JSON.

  def test_keys_that_keep_results_may_change_on_resume(self):
    # Whatever leaves a finished run's results alone cannot change what a
    # resumed run computes either.
    for key in config_keys.KEYS:
      if key.keeps_results:
        self.assertTrue(key.resumable, key.name)

  def test_changes_results(self):
    self.assertTrue(config_keys.changes_results('opt.lr'))
    self.assertTrue(config_keys.changes_results('train.steps'))
    self.assertFalse(config_keys.changes_results('runtime.learner_loop'))
    self.assertTrue(config_keys.changes_results('not.a_key'))


class OutOfMemoryTest(absltest.TestCase):

  def test_allocation_failure_names_the_knobs(self):
    error = errors.out_of_memory(RuntimeError(
        'RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8.00GiB.'
        '\nBufferAssignment OOM Debugging.\n...'))
    self.assertIn('the device ran out of memory (RESOURCE_EXHAUSTED', str(error))
    self.assertIn('data.batch_size', str(error))
    self.assertNotIn('\n', str(error))
    self.assertIsNone(errors.out_of_memory(RuntimeError('INTERNAL: other')))


class DocsTest(absltest.TestCase):

  def test_readme_key_table_matches_the_registry(self):
    with open(os.path.join(REPO, 'README.md')) as f:
      rows = [line for line in f if line.startswith('| `')]
    first_cells = ' '.join(row.split(' | ')[0] for row in rows)
    section = '|'.join(s for s in config_keys.SECTIONS if s)
    named = set(re.findall(rf'`((?:{section})\.\w+|seed)[`=]', first_cells))
    self.assertEqual(named, set(config_keys.BY_NAME))

  def test_describe_lists_every_key(self):
    text = config_keys.describe()
    for key in config_keys.KEYS:
      self.assertIn(f'  {key.name} = ', text)


if __name__ == '__main__':
  absltest.main()
