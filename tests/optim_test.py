"""Learning-rate schedules and the optimizer's weight decay."""

from absl.testing import absltest
import jax.numpy as jnp
import numpy as np

from hier_avg.core import optim
from tests.support import engines


class ScheduleTest(absltest.TestCase):

  def test_constant_with_warmup(self):
    schedule = optim.learning_rate_schedule(
        engines.opt_config(lr=0.4, warmup_epochs=1.0), 4, 100)
    np.testing.assert_allclose([schedule(s) for s in range(6)],
                               [0.0, 0.1, 0.2, 0.3, 0.4, 0.4], rtol=1e-6)

  def test_step_milestones_in_epochs(self):
    schedule = optim.learning_rate_schedule(
        engines.opt_config(lr=1.0, schedule='step', milestones=(2, 3),
                           decay_factor=0.1), 10, 100)
    np.testing.assert_allclose(
        [schedule(s) for s in (0, 19, 20, 29, 30, 99)],
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)

  def test_cosine_reaches_zero(self):
    schedule = optim.learning_rate_schedule(
        engines.opt_config(lr=1.0, schedule='cosine'), 10, 100)
    np.testing.assert_allclose([schedule(0), schedule(50), schedule(100)],
                               [1.0, 0.5, 0.0], atol=1e-6)


class OptimizerTest(absltest.TestCase):

  def test_coupled_weight_decay(self):
    # Coupled L2: the update is -lr * (grad + wd * w), as torch.optim.SGD.
    config = engines.opt_config(lr=0.5, momentum=0.0, weight_decay=0.1)
    tx = optim.make_optimizer(config, optim.learning_rate_schedule(
        config, 1, 1))
    w, g = jnp.array([2.0]), jnp.array([1.0])
    updates, _ = tx.update(g, tx.init(w), w)
    np.testing.assert_allclose(updates, [-0.5 * (1.0 + 0.1 * 2.0)])


if __name__ == '__main__':
  absltest.main()
