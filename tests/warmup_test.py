"""Synchronous warmup (post-local SGD): `hier.sync_warmup_steps`."""

import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import numpy as np

from hier_avg import config_keys, train
from hier_avg.core.hierarchy import Hierarchy
from hier_avg.core.learner import step_key
from hier_avg.core.schedule import Schedule
from hier_avg.errors import UserError
from tests.support import configs
from tests.support import devices
from tests.support import engines
from tests.support import outputs
from tests.support import reference
from tests.support import trees


def setUpModule():
  devices.set_up_devices()


def _schedule(k1, k2, warmup) -> Schedule:
  return Hierarchy(8, (4, 8), (k1, k1 * k2), warmup).schedule()


class WarmupScheduleTest(parameterized.TestCase):

  def test_warmup_steps_average_globally_then_periods_count_from_w(self):
    schedule = _schedule(4, 2, 5)
    names = [getattr(schedule.level_after(t), 'name', None)
             for t in range(1, 15)]
    self.assertEqual(names, ['global'] * 5 + [None] * 3 + ['local'] +
                     [None] * 3 + ['global', None])

  @parameterized.product(k1=(1, 2, 3), k2=(1, 2), warmup=(0, 1, 4, 5),
                         steps=(0, 3, 5, 11, 20))
  def test_counts_and_rounds_agree_with_level_after(self, k1, k2, warmup,
                                                    steps):
    schedule = _schedule(k1, k2, warmup)
    brute = {'local': 0, 'global': 0}
    for t in range(1, steps + 1):
      if (level := schedule.level_after(t)) is not None:
        brute[level.name] += 1
    self.assertEqual(schedule.counts(steps), brute)
    # Rounds end at every averaging, and only there (besides the stop).
    ends = [r.end for r in schedule.rounds(0, steps)]
    self.assertEqual(ends, sorted(
        {t for t in range(1, steps + 1) if schedule.level_after(t)} |
        ({steps} if steps else set())))
    for r in schedule.rounds(0, steps):
      self.assertEqual(r.level, schedule.level_after(r.end))

  def test_asgd_refuses_a_warmup(self):
    config = configs.tiny_config(1)
    config.hier.update(algorithm='asgd', sync_warmup_steps=4)
    with self.assertRaisesRegex(UserError, 'sync_warmup_steps 0'):
      config_keys.validate(config)


class WarmupOracleTest(absltest.TestCase):

  def test_matches_reference(self):
    warmup, steps = 5, 14
    data = engines.tiny_data()
    learner = engines.make_learner('bn', data, nesterov=True)
    hierarchy = Hierarchy(8, (4, 8), (2, 6), warmup)
    engine = engines.make_levels_engine(learner, hierarchy, (2, 4))
    sampler = engines.make_sampler(data, 8)
    init = engine.init_state(0, data.image_shape)
    ref_learners = engines.learner_states(init)
    final = engines.run_engine(engine, data, sampler, steps, state=init)
    reference.run(learner, ref_learners, reference.hier_levels(8, 4, 2, 3),
                  ('params', 'batch_stats'), data.train_images,
                  data.train_labels, sampler, steps, sync_warmup=warmup)
    got = engines.learner_states(final)
    for i in range(8):
      for part in ('params', 'batch_stats', 'opt_state'):
        trees.assert_trees_close(got[i][part], ref_learners[i][part])


class WarmupIsSynchronousSgdTest(absltest.TestCase):
  """Post-local SGD's warmup is synchronous SGD: DDP's gradient
  all-reduce, which leaves every learner with the same optimizer state."""

  def test_the_warmup_is_momentum_sgd_on_the_mean_gradient(self):
    warmup, lr, momentum, decay = 4, 0.05, 0.9, 1e-3
    data = engines.tiny_data()
    learner = engines.make_learner('bn', data, lr=lr, momentum=momentum,
                                   weight_decay=decay, nesterov=False)
    engine = engines.make_levels_engine(
        learner, Hierarchy(8, (4, 8), (2, 4), warmup), (2, 4),
        average=('params', 'batch_stats'))
    sampler = engines.make_sampler(data, 8)
    init = engine.init_state(0, data.image_shape)
    start = engines.learner_states(init)
    got = engines.learner_states(engines.run_engine(engine, data, sampler,
                                                    warmup, state=init))
    # Written out in float64: g the mean over learners of each one's
    # gradient at the common model x (its own minibatch and augmentation
    # key, BatchNorm statistics averaged after each step), then
    # m <- momentum m + g + decay x;  x <- x - lr m.
    grad_fn = jax.jit(learner.loss_and_grads)
    f64 = lambda t: [np.asarray(x, np.float64) for x in jax.tree.leaves(t)]
    x = f64(start[0]['params'])
    m = [np.zeros_like(v) for v in x]
    stats = [l['batch_stats'] for l in start]
    treedef = jax.tree.structure(start[0]['params'])
    for t in range(warmup):
      model = jax.tree.unflatten(treedef, [v.astype(np.float32) for v in x])
      indices = sampler.indices(t)
      grads, new_stats = [], []
      for p, l in enumerate(start):
        _, s, g = grad_fn(model, stats[p], step_key(l['rng'], t),
                          data.train_images[indices[p]],
                          data.train_labels[indices[p]])
        grads.append(f64(g))
        new_stats.append(s)
      g = [np.mean(each, 0) for each in zip(*grads)]
      m = [momentum * mi + gi + decay * xi for mi, gi, xi in zip(m, g, x)]
      x = [xi - lr * mi for xi, mi in zip(x, m)]
      mean_stats = jax.tree.map(lambda *s: np.mean(s, 0), *new_stats)
      stats = [mean_stats] * len(start)
    for p in range(8):
      trees.assert_trees_close(jax.tree.leaves(got[p]['params']), x)
      # The momentum buffers: the optimizer state's floating leaves.
      buffers = [b for b in jax.tree.leaves(got[p]['opt_state'])
                 if np.issubdtype(b.dtype, np.floating)]
      trees.assert_trees_close(buffers, m)
      # Every learner leaves the warmup with the same model and optimizer
      # state, to the bit: the next local steps start from one state.
      for part in ('params', 'opt_state'):
        chex.assert_trees_all_equal(got[p][part], got[0][part])


class WarmupResumeTest(absltest.TestCase):

  def test_a_run_stopped_inside_the_warmup_resumes_exactly(self):
    def config(steps):
      c = configs.tiny_config(steps)
      c.hier.update(k1=2, k2=2, sync_warmup_steps=5)
      # Rounds of one step: the stopped and the straight run make the
      # same compiled calls, so the models must agree to the last bit.
      c.train.update(log_every=1, checkpoint_every=0)
      return c

    straight = tempfile.mkdtemp()
    whole = train.train_and_evaluate(config(12), straight)
    resumed = tempfile.mkdtemp()
    train.train_and_evaluate(config(3), resumed)
    again = train.train_and_evaluate(config(12), resumed)
    self.assertEqual(again['resumed_from_step'], 3)
    chex.assert_trees_all_equal(
        outputs.final_model(resumed),
        outputs.final_model(straight))
    # 5 warmup steps and 1 global averaging at 5 + 4: 6 global in all.
    self.assertEqual(whole['global_averagings'], 6)
    self.assertEqual(again['local_averagings'], whole['local_averagings'])


if __name__ == '__main__':
  absltest.main()
