"""How much memory a device has, for the budgets that choose layouts.

`data.placement='auto'` (is the training set small enough to copy onto
every device?) and `model.conv='auto'` (do im2col's patches fit?) both ask
the same question of the same number.
"""

import os

from hier_avg.errors import require


def physical_memory_bytes() -> int:
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


def device_memory_bytes(devices) -> int:
  """The memory of the smallest of `devices` (this process's).

  An accelerator reports its own (`memory_stats()['bytes_limit']`). CPU
  devices report none: they share the host's RAM, so each gets its share.
  """
  limits = [(device.memory_stats() or {}).get('bytes_limit')
            for device in devices]
  if all(limits):
    return min(limits)
  return physical_memory_bytes() // len(devices)


# The share of a device's memory the training state may take: the rest
# holds a round's activations, gradients and data.
STATE_SHARE = 0.5


def check_state_fits(state_bytes: int, devices) -> None:
  """Refuses a training state that cannot fit, before it is allocated
  (an allocation that size could exhaust the host, or never end)."""
  have = device_memory_bytes(devices)
  require(state_bytes <= STATE_SHARE * have,
          f'the training state takes {state_bytes / 2**30:.2f} GiB per '
          f'device, more than {STATE_SHARE:.0%} of a device\'s '
          f'{have / 2**30:.2f} GiB; put fewer learners on each device '
          '(hier.num_learners, more devices), lower hier.staleness (ASGD '
          'keeps that many models per learner) or take a smaller model.')
