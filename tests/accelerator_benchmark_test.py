"""benchmarks/accelerator.py's CPU smoke run: every row measured, none rots.

The script exists to be run the day an accelerator is available; this runs
it with `--tiny` sizes on CPU (one fake device, as each of its rows uses)
and checks the table it prints.
"""

import os
import re
import subprocess
import sys

from absl.testing import absltest
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'benchmarks', 'accelerator.py')

# (rows, runtime.learner_loop, model.conv, runtime.step_loop) of every row
# the tiny run prints for cnn_small: P = 2 learners x B = 4.
EXPECTED_ROWS = (
    ('one model, batch 8', '-', 'xla', '-'),
    ('2 learners x 4 on 1 device', 'vmap', 'im2col', 'scan'),
    ('2 learners x 4 on 1 device', 'vmap', 'xla', 'scan'),
    ('2 learners x 4 on 1 device', 'vmap', 'im2col', 'unroll'),
    ('2 learners x 4 on 1 device', 'unroll', 'xla', 'scan'),
    ('2 learners x 4 on 1 device', 'unroll', 'im2col', 'scan'),
)
HEADER = ('model', 'rows', 'runtime.learner_loop', 'model.conv',
          'runtime.step_loop', 'images/s', 'vs one model',
          'compile s per program', 'peak device memory')


def table_rows(stdout: str) -> list[tuple[str, ...]]:
  """The Markdown table's cells, header first, separator left out."""
  return [tuple(cell.strip() for cell in line.strip('|').split('|'))
          for line in stdout.splitlines()
          if line.startswith('|') and not line.startswith('|---')]


@pytest.mark.slow
class TinyRunTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS='',
               HIER_AVG_BENCH_DEVICES='1', JAX_PLATFORMS='cpu')
    cls.done = subprocess.run(
        [sys.executable, SCRIPT, '--tiny'], capture_output=True, text=True,
        timeout=300, env=env, cwd=REPO, check=False)

  def test_exits_zero(self):
    self.assertEqual(self.done.returncode, 0, self.done.stderr[-3000:])

  def test_table_has_every_row_with_numbers(self):
    rows = table_rows(self.done.stdout)
    self.assertNotEmpty(rows, self.done.stdout + self.done.stderr[-3000:])
    self.assertEqual(rows[0], HEADER)
    body = rows[1:]
    self.assertEqual([row[:5] for row in body],
                     [('cnn_small',) + row for row in EXPECTED_ROWS])
    for row in body:
      with self.subTest(row=row[:5]):
        self.assertGreater(float(row[5].replace(',', '')), 0)
        self.assertRegex(row[6], r'^\d+\.\d\dx$')
        # One compiled program or more, each with its seconds.
        self.assertRegex(row[7], r'^[a-z ]+x?\d* -?\d+\.\d'
                                 r'(, [a-z ]+x?\d* -?\d+\.\d)*$')
        self.assertRegex(row[8], r'^(n/a|\d+\.\d\d GiB)$')
    self.assertEqual(body[0][6], '1.00x')  # The one model is the baseline.

  def test_header_line_names_the_sizes_and_machine(self):
    self.assertRegex(self.done.stdout, re.compile(
        r'^cnn_small, bfloat16, 16x16 synthetic images, P = 2 x B = 4 .*'
        r'jax .*; \d+ s$', re.M))


if __name__ == '__main__':
  absltest.main()
