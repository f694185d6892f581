"""How many devices a CPU run sees, chosen before the backend starts.

XLA:CPU shows one device unless told otherwise, and then every learner is
packed on it: the `:cpu` preset ran ~1.7x slower that way than on 8 fake
devices (benchmarks/README.md). A run on CPU therefore gets `DEFAULT` fake
devices unless the user chose: `launch.py --cpu_devices=N`, or their own
`XLA_FLAGS=--xla_force_host_platform_device_count=N`. Accelerator runs are
unaffected (the count applies to the host platform only). XLA reads the
flag when the backend starts, so this must run before the first jax call
that touches devices.
"""

import os
import re

FLAG = '--xla_force_host_platform_device_count'
DEFAULT = 8
# Each fake device has threads of its own: 32768 aborted the process
# (pthread_create failed) after 45 s; 1024 start in about 3 s.
MAXIMUM = 1024


def configure(count: int | None = None) -> int:
  """Sets the fake CPU device count; returns the count in effect.

  An explicit `count` wins; otherwise a count already in XLA_FLAGS stays;
  otherwise `DEFAULT`.
  """
  flags = os.environ.get('XLA_FLAGS', '')
  current = re.search(rf'{FLAG}=(\d+)', flags)
  if count is None and current:
    return int(current.group(1))
  count = DEFAULT if count is None else count
  flags = re.sub(rf'\s*{FLAG}=\d+', '', flags).strip()
  os.environ['XLA_FLAGS'] = f'{FLAG}={count} {flags}'.strip()
  return count
