"""The fake CPU device count of the test processes (imports no jax).

`tests/conftest.py` sets XLA_FLAGS from it before jax is imported; the
launcher gives each `launch.py` process its own count, and the other XLA
flags the tests run with.
"""

import re

NUM_CPU_DEVICES = 8


def xla_flags(count: int, flags: str = '') -> str:
  """XLA_FLAGS asking for `count` fake CPU devices, before any `flags`.

  First in the string: chex.set_n_cpu_devices reads it with re.match.
  """
  return f'--xla_force_host_platform_device_count={count} {flags}'.strip()


def with_count(count: int, flags: str) -> str:
  """`flags` (an XLA_FLAGS value) with their device count set to `count`
  and every other flag kept (`--xla_cpu_max_isa=AVX2`, say)."""
  return xla_flags(count, re.sub(
      r'--xla_force_host_platform_device_count=\S*', '', flags))


def set_up_devices() -> None:
  """Fails loudly if jax was imported before conftest set the device count."""
  import chex  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  chex.set_n_cpu_devices(NUM_CPU_DEVICES)
  assert jax.device_count() == NUM_CPU_DEVICES, jax.devices()
