"""The shared test support itself: trees, the launcher, device setup."""

import os
import subprocess
import sys

from absl.testing import absltest
import jax
import numpy as np

from tests.support import launcher
from tests.support import trees


def _tree():
  return {'w': np.arange(6.0).reshape(2, 3), 'b': np.zeros(2)}


class AssertTreesCloseTest(absltest.TestCase):

  def test_equal_and_nearly_equal_trees_pass(self):
    trees.assert_trees_close(_tree(), _tree())
    near = jax.tree.map(lambda x: x + 1e-6, _tree())
    trees.assert_trees_close(_tree(), near)
    trees.assert_trees_close(_tree(), near, atol=2e-6, rtol=0)

  def test_values_beyond_the_tolerance_fail(self):
    far = jax.tree.map(lambda x: x + 1e-3, _tree())
    with self.assertRaises(AssertionError):
      trees.assert_trees_close(_tree(), far)
    with self.assertRaises(AssertionError):
      trees.assert_trees_close(_tree(), jax.tree.map(np.nextafter, _tree(),
                                                     far), atol=0, rtol=0)

  def test_same_leaves_under_other_keys_fail(self):
    # 'a' < 'v' as 'b' < 'w': the leaves come out in the same order.
    renamed = {'v': np.arange(6.0).reshape(2, 3), 'a': np.zeros(2)}
    for x, y in zip(jax.tree.leaves(_tree()), jax.tree.leaves(renamed)):
      np.testing.assert_array_equal(x, y)
    with self.assertRaises(AssertionError):
      trees.assert_trees_close(_tree(), renamed)

  def test_same_leaves_in_other_containers_fail(self):
    leaves = jax.tree.leaves(_tree())
    for other in (leaves, tuple(leaves), {'b': leaves[0], 'w': [leaves[1]]}):
      with self.subTest(other=type(other).__name__):
        with self.assertRaises(AssertionError):
          trees.assert_trees_close(_tree(), other)
    with self.assertRaises(AssertionError):
      trees.assert_trees_close(leaves, tuple(leaves))


def _python(code, log=None):
  """A Python process run as `launcher.start` runs launch.py."""
  if log is None:
    return launcher.Run([sys.executable, '-c', code], None,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                        text=True)
  with open(log, 'w') as f:
    return launcher.Run([sys.executable, '-c', code], log, stdout=f,
                        stderr=subprocess.STDOUT)


class LauncherTest(absltest.TestCase):

  def test_finish_returns_stderr_or_the_log(self):
    code = 'import sys; print("out"); print("err", file=sys.stderr)'
    self.assertEqual(launcher.finish(_python(code)), 'err\n')
    log = os.path.join(self.create_tempdir().full_path, 'log.txt')
    self.assertCountEqual(launcher.finish(_python(code, log)).split(),
                          ['out', 'err'])

  def test_a_hung_run_is_killed_and_fails(self):
    runs = [_python('import time; time.sleep(600)') for _ in range(2)]
    with self.assertRaisesRegex(AssertionError, 'still ran after 1 s'):
      launcher.finish_all(runs, timeout=1)
    self.assertTrue(all(run.returncode is not None for run in runs))

  def test_check_fails_on_an_error_exit(self):
    code = 'import sys; sys.exit("bad input")'
    self.assertIn('bad input', launcher.finish(_python(code)))
    with self.assertRaisesRegex(AssertionError, 'exit code 1:\nbad input'):
      launcher.finish(_python(code), check=True)

  def test_waiting_for_a_step_fails_when_the_run_ends_first(self):
    workdir = self.create_tempdir().full_path
    with self.assertRaisesRegex(AssertionError, 'before step 1'):
      launcher.wait_for_step(workdir, 1, [_python('pass')], timeout=60)


class ImportsTest(absltest.TestCase):

  def test_device_setup_imports_no_jax(self):
    # conftest imports it before XLA_FLAGS is set: jax must not load yet.
    code = ('import sys\n'
            'from tests.support import devices\n'
            'assert devices.NUM_CPU_DEVICES > 1\n'
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('jax', 'jaxlib', 'numpy', 'hier_avg')))\n")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True,
                            text=True, env=launcher.python_env(), check=True)
    self.assertEqual(result.stdout.strip(), '[]', result.stderr)


if __name__ == '__main__':
  absltest.main()
