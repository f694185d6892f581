"""pytest setup: repo on sys.path, fake CPU devices before jax is imported."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
# Imports no jax: XLA_FLAGS must be set before anything imports it.
from tests.support import devices

os.environ['XLA_FLAGS'] = devices.xla_flags(
    devices.NUM_CPU_DEVICES, os.environ.get('XLA_FLAGS', ''))

# absltest helpers (create_tempdir) read flags that pytest never parses.
from absl import flags
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()
