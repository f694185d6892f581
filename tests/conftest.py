"""pytest setup: repo on sys.path, fake CPU devices before jax is imported."""

import atexit
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
# Imports no jax: XLA_FLAGS must be set before anything imports it.
from tests.support import devices

os.environ['XLA_FLAGS'] = devices.with_count(
    devices.NUM_CPU_DEVICES, os.environ.get('XLA_FLAGS', ''))

# Runs in this process use JAX's persistent compilation cache
# (runtime.compilation_cache='auto'): keep it in a folder of the session's
# own, not the user's ~/.cache.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache = tempfile.mkdtemp(prefix='hier_avg_tests_inprocess_cache_')
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache

# absltest helpers (create_tempdir) read flags that pytest never parses.
from absl import flags
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()
