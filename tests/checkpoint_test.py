"""Checkpoints: exact round trip, newest-first, fingerprints, damaged files."""

import json
import os

from absl.testing import absltest
import jax
import numpy as np
import optax

from configs import cifar10
from hier_avg import config_keys
from hier_avg.run import checkpoint
from hier_avg.errors import UserError
from tests.support import devices
from tests.support import engines
from tests.support import outputs


def setUpModule():
  devices.set_up_devices()


def trained_state(steps=3, outer_tx=None):
  data = engines.tiny_data()
  engine = engines.make_engine(engines.make_learner('bn', data), 8, 4, 2, 2,
                               (2, 4), outer_tx=outer_tx)
  state = engines.run_engine(engine, data, engines.make_sampler(data, 8),
                             steps)
  return engine, data, state


def assert_states_equal(test, a, b):
  test.assertEqual(int(a.step), int(b.step))
  for part in ('params', 'batch_stats', 'opt_state', 'outer'):
    jax.tree.map(np.testing.assert_array_equal, getattr(a, part),
                 getattr(b, part))
  np.testing.assert_array_equal(jax.random.key_data(a.rng),
                                jax.random.key_data(b.rng))


def save(checkpoints, state, step):
  checkpoints.save(state, {'step': step, 'fingerprint': {}})
  checkpoints.wait()


class CheckpointsTest(absltest.TestCase):

  def test_round_trip_is_exact_and_keeps_the_layout(self):
    engine, data, state = trained_state()
    ckpts = checkpoint.Checkpoints(self.create_tempdir().full_path, keep=2)
    save(ckpts, state, 3)
    fresh = engine.init_state(1, data.image_shape)
    restored, record = ckpts.restore(fresh)
    self.assertEqual(record['step'], 3)
    assert_states_equal(self, restored, state)
    # Restored arrays sit where the fresh ones do: no recompilation later.
    self.assertEqual(restored.params['Dense_0']['kernel'].sharding,
                     fresh.params['Dense_0']['kernel'].sharding)
    ckpts.close()

  def test_round_trip_with_an_outer_optimizer(self):
    engine, data, state = trained_state(5, optax.sgd(0.5, momentum=0.9))
    ckpts = checkpoint.Checkpoints(self.create_tempdir().full_path, keep=2)
    save(ckpts, state, 5)
    restored, _ = ckpts.restore(engine.init_state(1, data.image_shape))
    assert_states_equal(self, restored, state)
    ckpts.close()

  def test_keeps_the_newest(self):
    _, _, state = trained_state(1)
    ckpts = checkpoint.Checkpoints(self.create_tempdir().full_path, keep=2)
    for step in (1, 2, 3):
      save(ckpts, state, step)
    self.assertEqual(ckpts.steps(), [3, 2])
    ckpts.close()

  def test_nothing_to_restore(self):
    engine, data, _ = trained_state(1)
    ckpts = checkpoint.Checkpoints(self.create_tempdir().full_path, keep=2)
    self.assertIsNone(ckpts.restore(engine.init_state(0, data.image_shape)))

  def test_damaged_newest_is_moved_aside_and_can_be_saved_again(self):
    engine, data, state = trained_state(2)
    workdir = self.create_tempdir().full_path
    ckpts = checkpoint.Checkpoints(workdir, keep=3)
    save(ckpts, state, 2)
    save(ckpts, state.replace(step=state.step + 1), 3)
    ckpts.close()
    newest = os.path.join(workdir, checkpoint.CHECKPOINT_DIR, '3')
    damage(newest)
    damaged = outputs.snapshot(newest)
    ckpts = checkpoint.Checkpoints(workdir, keep=3)
    with self.assertLogs(level='WARNING') as logs:
      restored, record = ckpts.restore(engine.init_state(0, data.image_shape))
    self.assertEqual(record['step'], 2)
    assert_states_equal(self, restored, state)
    text = '\n'.join(logs.output)
    self.assertIn('unreadable', text)
    # Kept, under a name no run reads, and said so.
    self.assertFalse(os.path.exists(newest))
    self.assertEqual(outputs.snapshot(newest + checkpoint.UNREADABLE),
                     damaged)
    self.assertIn(f'moved the unreadable checkpoint of step 3 to {newest}'
                  f'{checkpoint.UNREADABLE}', text)
    # The run that resumed from 2 saves its step 3 again.
    save(ckpts, state.replace(step=state.step + 1), 3)
    self.assertEqual(ckpts.steps(), [3, 2])
    ckpts.close()

  def test_records_that_are_not_records_are_skipped(self):
    engine, data, state = trained_state(1)
    for name, record in (('list', [1, 2]), ('no_fingerprint', {'step': 2}),
                         ('other_step', {'step': 7, 'fingerprint': {}})):
      with self.subTest(name):
        workdir = self.create_tempdir().full_path
        ckpts = checkpoint.Checkpoints(workdir, keep=3)
        save(ckpts, state, 1)
        save(ckpts, state, 2)
        ckpts.close()
        with open(os.path.join(workdir, checkpoint.CHECKPOINT_DIR, '2',
                               'record', 'metadata'), 'w') as f:
          json.dump(record, f)
        ckpts = checkpoint.Checkpoints(workdir, keep=3)
        with self.assertLogs(level='WARNING') as logs:
          _, got = ckpts.restore(engine.init_state(0, data.image_shape))
        self.assertEqual(got['step'], 1)
        self.assertIn('checkpoint', '\n'.join(logs.output))
        ckpts.close()

  def test_all_damaged_is_a_clear_error(self):
    engine, data, state = trained_state(1)
    workdir = self.create_tempdir().full_path
    ckpts = checkpoint.Checkpoints(workdir, keep=3)
    save(ckpts, state, 1)
    ckpts.close()
    damage(os.path.join(workdir, checkpoint.CHECKPOINT_DIR, '1'))
    ckpts = checkpoint.Checkpoints(workdir, keep=3)
    with self.assertRaisesRegex(UserError, 'no checkpoint in .* can be read'):
      ckpts.restore(engine.init_state(0, data.image_shape))

  def test_another_state_layout_is_a_clear_error(self):
    # A state with one more leaf (as another version's in-flight record
    # would add) does not restore into today's, and nothing is moved.
    engine, data, state = trained_state(1)
    workdir = self.create_tempdir().full_path
    ckpts = checkpoint.Checkpoints(workdir, keep=3)
    save(ckpts, state.replace(comm={'inflight': state.params}), 1)
    ckpts.close()
    before = outputs.snapshot(workdir)
    ckpts = checkpoint.Checkpoints(workdir, keep=3)
    with self.assertRaisesRegex(UserError, r'checkpoint .*/1 holds a '
                                'training state laid out differently'):
      ckpts.restore(engine.init_state(0, data.image_shape))
    ckpts.close()
    self.assertEqual(outputs.snapshot(workdir), before)
    self.assertNotEqual(checkpoint.state_layout(state),
                        checkpoint.state_layout(state.replace(
                            comm={'inflight': state.params})))

  def test_half_written_checkpoint_is_never_picked_up(self):
    workdir = self.create_tempdir().full_path
    ckpts = checkpoint.Checkpoints(workdir, keep=3)
    # What orbax leaves behind when killed mid-save.
    os.makedirs(os.path.join(workdir, checkpoint.CHECKPOINT_DIR,
                             '7.orbax-checkpoint-tmp-1234567'))
    self.assertEqual(ckpts.steps(), [])


def damage(step_dir):
  """Overwrites every file of a checkpoint with garbage."""
  for root, _, files in os.walk(step_dir):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'\x00garbage')


class FingerprintTest(absltest.TestCase):

  def test_harmless_changes_are_allowed(self):
    a, b = cifar10.get_config('cpu'), cifar10.get_config('cpu')
    b.train.steps, b.train.eval_every, b.mesh.node_devices = 999, 7, 1
    b.hier.recompute_batches = 5  # Only what evaluation sees.
    checkpoint.check_fingerprint(config_keys.fingerprint(a),
                                 config_keys.fingerprint(b), 'dir')

  def test_changes_that_alter_the_run_are_refused_by_name(self):
    for key, value in (('hier.num_learners', 16), ('hier.group_size', 2),
                       ('model.name', 'resnet18'), ('data.name', 'mnist'),
                       ('seed', 1), ('opt.lr', 0.5),
                       ('hier.batch_stats', 'local'),
                       ('hier.opt_state', 'reset'),
                       ('hier.algorithm', 'asgd')):
      a, b = cifar10.get_config('cpu'), cifar10.get_config('cpu')
      section, _, name = key.rpartition('.')
      setattr(b[section] if section else b, name, value)
      with self.assertRaisesRegex(UserError, f'made with {key}=') as e:
        checkpoint.check_fingerprint(config_keys.fingerprint(a),
                                     config_keys.fingerprint(b), 'dir')
      self.assertNotIn('\n', str(e.exception))


if __name__ == '__main__':
  absltest.main()
