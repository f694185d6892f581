"""pytest setup: fake CPU devices before jax is imported, repo on sys.path."""

import os
import sys

NUM_CPU_DEVICES = 8
# First in the string: chex.set_n_cpu_devices reads it with re.match.
os.environ['XLA_FLAGS'] = (
    f'--xla_force_host_platform_device_count={NUM_CPU_DEVICES} ' +
    os.environ.get('XLA_FLAGS', ''))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# absltest helpers (create_tempdir) read flags that pytest never parses.
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()
