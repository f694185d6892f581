"""The persistent compilation cache: where it goes, and that runs fill it."""

import os
import tempfile
from unittest import mock

from absl.testing import absltest
import jax

from hier_avg import train
from hier_avg.runtime import compilation_cache
from tests import lengths_test


class CompilationCacheTest(absltest.TestCase):

  def test_folder(self):
    with mock.patch.dict(os.environ, {'JAX_COMPILATION_CACHE_DIR': '/c'}):
      self.assertEqual(compilation_cache.folder('auto'), '/c')
    with mock.patch.dict(os.environ, {'JAX_COMPILATION_CACHE_DIR': ''}):
      self.assertEqual(compilation_cache.folder('auto'),
                       os.path.expanduser('~/.cache/hier_avg/jax'))
    self.assertEqual(compilation_cache.folder('/x/y'), '/x/y')
    self.assertIsNone(compilation_cache.folder('off'))

  def test_a_run_fills_the_folder_it_names(self):
    before = (jax.config.jax_enable_compilation_cache,
              jax.config.jax_compilation_cache_dir)
    folder = tempfile.mkdtemp()
    config = lengths_test.tiny_config(4, 'constant')
    config.runtime.compilation_cache = folder
    try:
      train.train_and_evaluate(config, tempfile.mkdtemp())
      self.assertNotEmpty(os.listdir(folder))
    finally:
      jax.config.update('jax_enable_compilation_cache', before[0])
      jax.config.update('jax_compilation_cache_dir', before[1])


if __name__ == '__main__':
  absltest.main()
