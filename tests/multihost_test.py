"""Two processes x 4 CPU devices train exactly like one process x 8.

Both processes are started here on 127.0.0.1 (gloo collectives) and are
killed if they outlive a deadline, so a hang fails the test instead of
stalling the suite.
"""

import os

from absl.testing import absltest
import pytest
import jax
import numpy as np

from hier_avg import models
from hier_avg.data import streaming
from tests.support import fake_imagenet
from tests.support import launcher
from tests.support import outputs
from tests.support import trees

# Multi-process runs of launch.py.
pytestmark = pytest.mark.slow

DEADLINE_S = 400
CONFIG = (*launcher.FAST, '--config.train.steps=8',
          '--config.train.log_every=2', '--config.train.eval_every=4',
          '--config.hier.k1=2', '--config.hier.k2=2')


def start(workdir, devices, *flags, log):
  return launcher.start(workdir, *CONFIG, *flags, devices=devices, log=log)


class MultiProcessTest(absltest.TestCase):

  def test_two_processes_match_one(self):
    tmp = self.create_tempdir().full_path
    logs = [os.path.join(tmp, f'log{i}.txt') for i in range(3)]
    port = launcher.free_port()
    # Process 0 and 1 share the workdir as hosts share a file system; only
    # process 0 writes to it.
    multi = [start(os.path.join(tmp, 'multi'), 4,
                   f'--coordinator_address=127.0.0.1:{port}',
                   '--num_processes=2', f'--process_id={i}', log=logs[i])
             for i in range(2)]
    multi_log, _ = launcher.finish_all(multi, DEADLINE_S, check=True)
    single = start(os.path.join(tmp, 'single'), 8, log=logs[2])
    launcher.finish(single, DEADLINE_S, check=True)

    self.assertIn("learner grid {'node': 2, 'local': 4} on mesh {'node': 2, "
                  "'local': 4}", multi_log)
    multi_rows, multi_model = outputs.rows_and_model(os.path.join(tmp, 'multi'))
    single_rows, single_model = outputs.rows_and_model(
        os.path.join(tmp, 'single'))
    self.assertEqual([r['step'] for r in multi_rows],
                     [r['step'] for r in single_rows])
    for a, b in zip(multi_rows, single_rows):
      self.assertAlmostEqual(a['train_loss'], b['train_loss'], places=5)
      # Over 256 test examples; a prediction at a near tie may flip.
      self.assertAlmostEqual(a.get('test_accuracy', 0),
                             b.get('test_accuracy', 0), delta=1 / 256)
    # Equal up to float rounding: gloo sums the 8 learners in another order
    # than one process does (measured: differences of 1-2 ulp).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                         atol=1e-6),
                 multi_model, single_model)
    self.assertEqual(jax.tree.structure(multi_model),
                     jax.tree.structure(single_model))


class HostPlacementMultiProcessTest(absltest.TestCase):

  def test_data_on_the_host_trains_as_on_the_devices(self):
    # Each process gathers only its own learners' minibatches on its host.
    tmp = self.create_tempdir().full_path
    runs = {}
    for placement in ('device', 'host'):
      port = launcher.free_port()
      workdir = os.path.join(tmp, placement)
      texts = launcher.finish_all(
          [start(workdir, 4, f'--config.data.placement={placement}',
                 f'--coordinator_address=127.0.0.1:{port}',
                 '--num_processes=2', f'--process_id={i}',
                 log=os.path.join(tmp, f'{placement}{i}.txt'))
           for i in range(2)], DEADLINE_S, check=True)
      for text in texts:
        self.assertIn(f'placement {placement} (data.placement={placement})',
                      text)
      runs[placement] = outputs.rows_and_model(workdir)
    (device_rows, device_model), (host_rows, host_model) = (
        runs['device'], runs['host'])
    # Other programs (one gathers minibatches by index, one is given
    # them): equal to float32 rounding, accuracies over 256 test examples
    # within one of them.
    outputs.assert_rows_close(host_rows, device_rows, accuracy_atol=1 / 256)
    trees.assert_trees_close(host_model, device_model, atol=1e-6, rtol=1e-6)


class StreamedMultiProcessTest(absltest.TestCase):
  """Streamed ImageNet on 2 processes x 4 devices, each reading its half."""

  def test_two_processes_train_and_evaluate_every_example_once(self):
    tmp = self.create_tempdir().full_path
    data_dir = fake_imagenet.archives(os.path.join(tmp, 'tfds'))
    image_size = 16
    # Prepared once before the run, as several hosts need it.
    data = streaming.load('imagenet2012', data_dir, image_size)
    workdir = os.path.join(tmp, 'run')
    port = launcher.free_port()
    # P = 8 (2 groups of 4), B = 2: (24 // 8) // 2 = 1 step per epoch.
    flags = (f'--config.data.path={data_dir}',
             f'--config.data.image_size={image_size}',
             '--config.data.batch_size=2', '--config.model.name=cnn_small',
             '--config.model.stem=cifar', '--config.opt.warmup_epochs=0',
             '--config.opt.lr=0.05', '--config.hier.k1=1',
             '--config.hier.k2=2', '--config.train.steps=3',
             '--config.train.eval_batch_size=8')
    procs = [launcher.start(
        workdir, *flags, f'--coordinator_address=127.0.0.1:{port}',
        '--num_processes=2', f'--process_id={i}', devices=4,
        config='configs/imagenet.py', log=os.path.join(tmp, f'log{i}.txt'))
             for i in range(2)]
    launcher.finish_all(procs, DEADLINE_S, check=True)
    summary = outputs.summary(workdir)
    # Each step sees 8 x 2 of the 24 examples.
    self.assertEqual((summary['steps'], summary['epochs']), (3, 2.0))

    # The run's evaluation, over 2 processes in padded batches, equals the
    # saved model scored here on the 10 validation images read in one go.
    variables = outputs.final_model(workdir)
    model = models.get_model('cnn_small', 1000)
    images, labels, valid = next(streaming.eval_batches(data, 10, 0, 1))
    self.assertTrue(valid.all())
    x = (images / 255.0 - data.mean) / data.std
    logits = model.apply(variables, x, train=False)
    log_probs = np.asarray(jax.nn.log_softmax(logits))
    self.assertAlmostEqual(summary['test_accuracy'],
                           float((logits.argmax(-1) == labels).mean()))
    self.assertAlmostEqual(summary['test_loss'],
                           float(-log_probs[np.arange(10), labels].mean()),
                           places=4)


if __name__ == '__main__':
  absltest.main()
