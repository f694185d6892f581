"""Reading what a run wrote: rows and summaries edited or damaged by hand
are one-line errors naming the file, not tracebacks."""

import json
import os

from absl.testing import absltest
from tensorboard.backend.event_processing import event_accumulator

from hier_avg.errors import UserError
from hier_avg.run import files
from hier_avg.run import metrics

GOOD = {'step': 4, 'wall_s': 1.5, 'train_loss': 2.0}


class RowsTest(absltest.TestCase):

  def write(self, *lines):
    path = os.path.join(self.create_tempdir().full_path, metrics.METRICS_FILE)
    with open(path, 'w') as f:
      f.write(''.join(lines))
    return path

  def test_rows_and_a_last_line_cut_short_by_a_kill(self):
    path = self.write(json.dumps(GOOD) + '\n', '{"step": 8, "wal')
    self.assertEqual(metrics.read_rows(path), [GOOD])

  def test_lines_that_are_no_rows(self):
    for line, problem in (
        ({'wall_s': 1.0}, 'its step is None, not an integer'),
        (7, 'not a JSON object'),
        ({'step': '8', 'wall_s': 1.0}, "its step is '8', not an integer"),
        ({'step': 8}, 'its wall_s is None, not a number')):
      with self.subTest(problem):
        path = self.write(json.dumps(GOOD) + '\n', json.dumps(line) + '\n')
        with self.assertRaisesRegex(
            UserError, f'{path} line 2 is not a metrics row \\({problem}\\); '
            'restore the file'):
          metrics.read_rows(path)
    path = self.write('{"step": 8, "wal\n', json.dumps(GOOD) + '\n')
    with self.assertRaisesRegex(UserError, 'line 1 is not a metrics row'):
      metrics.read_rows(path)


class SummaryTest(absltest.TestCase):

  def test_a_truncated_or_odd_summary_is_named(self):
    workdir = self.create_tempdir().full_path
    path = os.path.join(workdir, metrics.SUMMARY_FILE)
    self.assertEqual(metrics.read_summary(workdir), {})
    for text, problem in (('{"test_accuracy": 0.', 'not JSON'),
                          ('[1, 2]', 'not a JSON object')):
      with open(path, 'w') as f:
        f.write(text)
      with self.assertRaisesRegex(UserError,
                                  f'{path} is damaged \\({problem}'):
        metrics.read_summary(workdir)


class AtomicTest(absltest.TestCase):

  def test_a_write_that_fails_leaves_the_old_file(self):
    path = os.path.join(self.create_tempdir().full_path, 'summary.json')
    with files.atomic(path) as f:
      f.write('old')
    with self.assertRaises(OSError):
      with files.atomic(path) as f:
        f.write('half of the new')
        raise OSError(28, 'No space left on device')
    with open(path) as f:
      self.assertEqual(f.read(), 'old')
    self.assertEqual(os.listdir(os.path.dirname(path)), ['summary.json'])


if __name__ == '__main__':
  absltest.main()


class TensorBoardTest(absltest.TestCase):

  def test_a_resumed_run_holds_each_step_once(self):
    workdir = self.create_tempdir().full_path
    with metrics.MetricsWriter(workdir) as writer:
      for step in (1, 2, 3, 4):
        writer.write(step=step, train_loss=float(step), wall_s=0.0)
    # Resumed from the checkpoint of step 2: steps 3 and 4 run again.
    with metrics.MetricsWriter(workdir, keep_until_step=2) as writer:
      for step in (3, 4, 5):
        writer.write(step=step, train_loss=10.0 * step, wall_s=0.0)
    events = event_accumulator.EventAccumulator(workdir)
    events.Reload()
    self.assertEqual([(e.step, e.value) for e in events.Scalars('train_loss')],
                     [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0), (5, 50.0)])
