"""Drift per level: the learners' distances from their group means."""

import os
import tempfile

from absl.testing import absltest
import jax
import numpy as np

from hier_avg import train
from hier_avg.run import metrics
from tests.support import collectives
from tests.support import configs
from tests.support import devices
from tests.support import engines
from tests.support import reference
from tests.support import trees

LEVELS = ((2, 2), (4, 4), (8, 8))
STEPS = 16


def setUpModule():
  devices.set_up_devices()


def _hierarchy():
  return engines.levels_hierarchy(LEVELS)


def _run(engine, data, sampler, steps):
  """The final state and, per averaging, (step, level name, outputs)."""
  state = engine.init_state(0, data.image_shape)
  images, labels = engine.topology.put_replicated(data.train_images,
                                                  data.train_labels)
  events = []
  for round_ in engine.schedule.rounds(0, steps):
    state, outputs = engine.run_round(state, round_, (
        images, labels, engine.topology.put_round_indices(
            sampler, round_.first, round_.length)))
    if round_.level is not None:
      events.append((round_.end, round_.level.name,
                     jax.tree.map(np.asarray, outputs)))
  return state, events


class DriftTest(absltest.TestCase):

  def test_drift_and_spread_match_the_oracle_at_every_averaging(self):
    data = engines.tiny_data()
    learner = engines.make_learner('bn', data)
    engine = engines.make_levels_engine(learner, _hierarchy(), (2, 2, 2),
                                        spread=True)
    sampler = engines.make_sampler(data, 8)
    ref_learners = engines.learner_states(
        engine.init_state(0, data.image_shape), grid_ndim=3)
    _, events = _run(engine, data, sampler, STEPS)
    expected = []
    reference.run(learner, ref_learners, reference.nested_levels(8, LEVELS),
                  ('params', 'batch_stats'), data.train_images,
                  data.train_labels, sampler, STEPS, drift=expected)
    names = _hierarchy().level_names
    self.assertEqual([(step, name) for step, name, _ in events],
                     [(step, names[i]) for step, i, *_ in expected])
    for (step, name, outputs), (_, _, drift, spread) in zip(events,
                                                            expected):
      with self.subTest(step=step, level=name):
        self.assertGreater(drift, 0)
        np.testing.assert_allclose(outputs['drift'].mean(), drift,
                                   rtol=1e-4)
        if name == 'global':
          self.assertLess(spread, drift)
          np.testing.assert_allclose(outputs['spread'].mean(), spread,
                                     rtol=1e-4)
        else:
          self.assertNotIn('spread', outputs)

  def test_measuring_changes_nothing_and_drift_costs_no_collective(self):
    data = engines.tiny_data()
    learner = engines.make_learner('mlp', data)
    sampler = engines.make_sampler(data, 8)
    states, engines_ = {}, {}
    for name, kwargs in (('off', dict(drift=False)),
                         ('drift', dict(drift=True)),
                         ('spread', dict(drift=True, spread=True))):
      engine = engines.make_levels_engine(learner, _hierarchy(), (2, 2, 2),
                                          **kwargs)
      states[name], events = _run(engine, data, sampler, 8)
      engines_[name] = engine
      if name == 'off':
        self.assertEqual({tuple(o) for _, _, o in events}, {('loss',)})
    # The measures are extra outputs of other programs: the states agree
    # to float32 rounding (XLA may fuse the averaging differently).
    trees.assert_states_close(states['off'], states['drift'])
    trees.assert_states_close(states['off'], states['spread'])
    # All-reduces per averaging: one (a single dtype) with or without the
    # drift; the spread adds one, at the outermost level only.
    state = engines_['off'].init_state(0, data.image_shape)
    images, labels = engines_['off'].topology.put_replicated(
        data.train_images, data.train_labels)
    args = (state, images, labels,
            engines_['off'].topology.put_round_indices(sampler, 0, 2))
    for name, expected in (('off', (1, 1)), ('drift', (1, 1)),
                           ('spread', (1, 2))):
      engine = engines_[name]
      local, _, global_ = engine.schedule.levels
      self.assertEqual(
          (collectives.count_all_reduces(engine.train_round(local, 2),
                                         *args),
           collectives.count_all_reduces(engine.train_round(global_, 2),
                                         *args)), expected, name)

  def test_a_run_logs_drift_per_level_and_plots_it(self):
    config = configs.tiny_config(16)
    config.hier.update(levels=LEVELS, measure_spread=True)
    config.train.log_every = 8
    workdir = tempfile.mkdtemp()
    train.train_and_evaluate(config, workdir)
    rows = metrics.read_rows(os.path.join(workdir, metrics.METRICS_FILE))
    for key in ('local_drift', 'level1_drift', 'global_drift',
                'global_spread'):
      self.assertTrue(all(np.isfinite(r[key]) for r in rows), key)
    self.assertTrue(os.path.exists(os.path.join(workdir,
                                                metrics.DRIFT_PLOT_FILE)))


if __name__ == '__main__':
  absltest.main()
