"""Elastic multi-process runs (`run.elastic`): the survivors of a lost
process train on without its learners, as the simulator's outages say.

The fast tests check the pieces: each learner keeps its state and its data
when moved onto the survivors' mesh, and a round's averaging taken alone
after its steps is the fused round's. The slow ones run 3 real processes
of 2 fake devices (a node each), kill one between averagings or in place
of one, and compare the survivors' final model with the simulator's (one
process, `faults.outages` for the lost learners from the step after the
last averaging they took part in).
"""

import dataclasses
import os
import re
import tempfile
from unittest import mock

from absl.testing import absltest
import jax
import numpy as np
import pytest

from hier_avg import config_keys
from hier_avg.core.schedule import Round
from hier_avg.core.topology import make_topology
from hier_avg.errors import UserError
from hier_avg.run import elastic
from hier_avg.run import fault_injection
from tests.support import engines
from tests.support import launcher
from tests.support import outputs
from tests.support import trees


class MoveTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.data = engines.tiny_data()
    self.sampler = engines.make_sampler(self.data, 6)
    self.engine = engines.make_engine(
        engines.make_learner('mlp', self.data), 6, 2, 2, 2, mesh=(3, 2))
    # The learners of the middle node are lost; the others keep their ids.
    self.new = dataclasses.replace(
        make_topology((2, 2), self.engine.topology.axis_names, (-1, -1),
                      jax.devices()[:4]), ids=(0, 1, 4, 5))

  def test_each_learner_keeps_its_state(self):
    # 3 steps: the learners differ (the last averaging was of the nodes).
    state = engines.run_engine(self.engine, self.data, self.sampler, 3)
    moved = elastic.move(state, self.engine.topology, self.new)
    self.assertEqual(moved.params['Dense_0']['kernel'].sharding.mesh,
                     self.new.mesh)
    # Grid [node, local, ...]: nodes 0 and 2 of the old, in order.
    plain = lambda s: jax.tree.map(np.asarray, s.replace(
        step=None, rng=jax.random.key_data(s.rng)))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b[[0, 2]]),
                 plain(moved), plain(state))
    self.assertEqual(int(moved.step), 3)

  def test_each_learner_keeps_its_data_and_outputs(self):
    old = self.engine.topology
    np.testing.assert_array_equal(
        np.asarray(self.new.put_round_indices(self.sampler, 3, 2)),
        np.asarray(old.put_round_indices(self.sampler, 3, 2))[:, [0, 2]])
    losses = jax.device_put(np.arange(12.).reshape(2, 3, 2),
                            old.round_sharding())
    np.testing.assert_array_equal(
        np.asarray(elastic.move(losses, old, self.new)),
        np.arange(12.).reshape(2, 3, 2)[:, [0, 2]])


class AveragingAloneTest(absltest.TestCase):

  def test_a_rounds_averaging_taken_after_its_steps(self):
    # What an elastic run does at each averaging across processes: the
    # steps, then the averaging as a round of no steps.
    data = engines.tiny_data()
    sampler = engines.make_sampler(data, 6)
    engine = engines.make_engine(engines.make_learner('mlp', data), 6, 2, 2,
                                 2)
    fused = engines.run_engine(engine, data, sampler, 4)
    state = engine.init_state(0, data.image_shape)
    images, labels = engine.topology.put_replicated(data.train_images,
                                                    data.train_labels)
    for round_ in engine.schedule.rounds(0, 4):
      parts = [dataclasses.replace(round_, level=None, applies=()),
               Round(round_.end, 0, round_.level, round_.applies)]
      for part in parts if round_.level else [round_]:
        state, outputs = engine.run_round(
            state, part, (images, labels, engine.topology.put_round_indices(
                sampler, part.first, part.length)))
    self.assertEqual(outputs['loss'].shape, (0, 3, 2))
    trees.assert_states_close(state, fused)


class CheckTest(absltest.TestCase):

  def test_what_is_not_elastic_yet_is_refused(self):
    for key, value, named in (
        ('hier.compress', ('none', 'int8'), 'hier.compress'),
        ('hier.outer_momentum', 0.9, 'an outer optimizer'),
        ('faults.outages', ((0, 1, 2),), 'simulated failures'),
        ('hier.period_schedule', 'step', 'hier.period_schedule')):
      with self.subTest(key=key):
        config = config_keys.defaults()
        config.run.elastic = True
        section, name = key.split('.')
        config[section][name] = value
        with self.assertRaisesRegex(
            UserError, f'run.elastic=True is not supported with {named}'):
          config_keys.validate(config)
    config = config_keys.defaults()
    config.run.elastic = True
    config_keys.validate(config)  # Hier-AVG itself is.
    config.run.elastic = False
    config.hier.compress = ('none', 'int8')
    self.assertEqual(elastic.check(config), [])


class RefuseRejoinTest(absltest.TestCase):

  def test_a_process_started_in_a_run_in_progress_is_refused(self):
    class Client:
      def __init__(self, keys):
        self.keys = keys

      def key_value_try_get(self, key):
        if key not in self.keys:
          raise jax.errors.JaxRuntimeError(f'NOT_FOUND: {key}')
        return self.keys[key]

    with mock.patch.object(jax, 'process_count', return_value=3), \
         mock.patch.object(jax, 'process_index', return_value=1):
      with mock.patch.object(elastic, '_client', return_value=Client({})):
        elastic.refuse_rejoin()  # The run is starting: every process is.
      with mock.patch.object(elastic, '_client', return_value=Client(
          {elastic.RUNNING_KEY: '1'})):
        with self.assertRaisesRegex(
            UserError, 'process 1 started while this elastic run is in '
            'progress'):
          elastic.refuse_rejoin()


# 12 steps on 3 processes of 2 devices (a node of 2 learners each), global
# averagings every 4 steps across them.
STEPS = 12
FLAGS = (*launcher.FAST, '--config.hier.num_learners=6',
         '--config.hier.group_size=2', '--config.hier.k1=2',
         '--config.hier.k2=2', f'--config.train.steps={STEPS}',
         '--config.train.log_every=1', '--config.train.eval_every=4',
         '--config.train.checkpoint_every=4')
ELASTIC = ('--config.run.elastic=True', '--config.run.heartbeat_s=5',
           '--config.run.watchdog_min_s=30')
DEADLINE_S = 400


def _run_three(workdir, fault=None, *flags):
  """The 3 processes' exit codes and logs, `fault` injected (once)."""
  port = launcher.free_port()
  env = None if fault is None else {fault_injection.VARIABLE: (
      f'{fault},once={workdir}.fired')}
  logs = [f'{workdir}.log{i}' for i in range(3)]
  runs = [launcher.start(
      workdir, *FLAGS, *ELASTIC, *flags,
      f'--coordinator_address=127.0.0.1:{port}',
      '--num_processes=3', f'--process_id={i}', devices=2, env=env,
      log=logs[i]) for i in range(3)]
  texts = launcher.finish_all(runs, DEADLINE_S)
  return [run.returncode for run in runs], texts


def _simulated(workdir, lost=(), first=1):
  """The same run in one process, `lost` learners down from `first`."""
  outages = tuple((i, first, STEPS) for i in lost)
  result = launcher.run(workdir, *FLAGS, f'--config.faults.outages={outages}',
                        devices=6)
  assert result.returncode == 0, result.stderr[-3000:]
  return outputs.final_model(workdir), outputs.summary(workdir)


def _assert_close(model, other):
  # One process's 6-device averaging against 2 processes' 4-device one:
  # the same sums in another order.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               model, other)


@pytest.mark.slow
class RealLossTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.uninterrupted = os.path.join(cls.tmp, 'uninterrupted')
    cls.codes, cls.texts = _run_three(cls.uninterrupted)

  def _lost(self, fault, survivors, lost, noticed):
    """Runs with `fault`; checks the survivors end well, notice the loss
    after step `noticed` and equal the simulator's run without `lost` from
    step 5 (after the averaging of step 4, the last the lost process took
    part in)."""
    tmp = self.create_tempdir().full_path
    workdir = os.path.join(tmp, 'run')
    codes, texts = _run_three(workdir, fault)
    for i in survivors:
      self.assertEqual(codes[i], 0, texts[i][-3000:])
    self.assertEqual(sorted(codes), [-9, 0, 0], texts)
    summary = outputs.summary(workdir)
    self.assertEqual(summary['membership_changes'], [
        {'first': 5, 'processes': list(survivors), 'learners': list(lost)}])
    self.assertEqual([r['step'] for r in outputs.metrics_rows(workdir)],
                     list(range(1, STEPS + 1)))
    self.assertEqual([r['live_learners'] for r in
                      outputs.metrics_rows(workdir)],
                     [6] * (noticed - 1) + [4] * (STEPS - noticed + 1))
    model, simulated = _simulated(os.path.join(tmp, 'simulated'), lost, 5)
    _assert_close(outputs.final_model(workdir), model)
    self.assertEqual(summary['lost_learner_steps'],
                     simulated['lost_learner_steps'])
    # An example whose prediction is a float32 rounding apart may flip.
    self.assertAlmostEqual(summary['test_accuracy'],
                           simulated['test_accuracy'], delta=1 / 256)
    return texts

  def test_a_process_killed_between_averagings(self):
    # Process 1 (the middle node) dies once the round of steps 3..4 (a
    # global averaging) has ended everywhere: the others notice it before
    # the metrics row of step 4, and lay out nodes 0 and 2 on their own
    # devices.
    texts = self._lost('process=1,step=4,when=between', (0, 2), (2, 3), 4)
    self.assertIn('process(es) [1] lost (noticed after step 4)', texts[0])

  def test_a_process_killed_in_place_of_an_averaging(self):
    # Process 2 never takes part in the round of steps 7..8: the others
    # find it gone after their steps, before the averaging of step 8.
    texts = self._lost('process=2,step=8,when=during', (0, 1), (4, 5), 8)
    self.assertIn('process(es) [2] lost (noticed after step 8)', texts[0])

  def test_without_failures_nothing_changes(self):
    workdir = self.uninterrupted
    self.assertEqual(self.codes, [0, 0, 0], self.texts)
    self.assertEqual(outputs.summary(workdir)['membership_changes'], [])
    self.assertTrue(os.path.isdir(os.path.join(workdir, 'checkpoints',
                                               str(STEPS))))
    model, _ = _simulated(os.path.join(self.tmp, 'simulated'))
    _assert_close(outputs.final_model(workdir), model)

  def test_a_process_stuck_in_an_averaging_costs_a_restart(self):
    # Process 1 never takes part in the round of steps 7..8 and stays up
    # (as one killed inside the averaging's collective leaves the others
    # on CPU): the others wait in their check until the watchdog ends
    # them (its bound, 10 s here, plus run.heartbeat_s), and all resume
    # from the checkpoint of step 4.
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    codes, texts = _run_three(workdir, 'process=1,step=8,when=hang',
                              '--supervise', '--config.run.watchdog_min_s=10')
    self.assertEqual(codes, [0, 0, 0], texts)
    found = re.search(r"has taken (\d+) s, past the watchdog's bound of "
                      r'(\d+) s', texts[0])
    self.assertIsNotNone(found, texts[0][-3000:])
    took, bound = map(int, found.groups())
    self.assertLessEqual(took, bound + 1)  # Polled every 0.5 s.
    self.assertGreaterEqual(bound, 15)  # The heartbeat's 5 s on top.
    self.assertRegex(texts[0], r'resuming at step 4\b')
    self.assertEqual(outputs.summary(workdir)['membership_changes'], [])
    jax.tree.map(np.testing.assert_array_equal, outputs.final_model(workdir),
                 outputs.final_model(self.uninterrupted))

  def test_process_0_killed_costs_a_restart(self):
    # Process 0 runs the coordination service: JAX aborts the others.
    # Each host's supervisor starts its process again; they resume from
    # the checkpoint of step 8 (2 s before process 0 dies in place of the
    # last round: it is written in the background) and end as the run
    # never interrupted.
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    codes, texts = _run_three(workdir, 'process=0,step=12,when=during',
                              '--supervise')
    self.assertEqual(codes, [0, 0, 0], texts)
    self.assertIn('supervisor: the run ended with SIGKILL', texts[0])
    for text in texts[1:]:
      self.assertRegex(text, 'supervisor: the run ended with (SIGABRT|exit '
                       'code 4)')
    self.assertRegex(texts[0], r'resuming at step 8\b')
    self.assertEqual(outputs.summary(workdir)['membership_changes'], [])
    jax.tree.map(np.testing.assert_array_equal, outputs.final_model(workdir),
                 outputs.final_model(self.uninterrupted))


if __name__ == '__main__':
  absltest.main()
