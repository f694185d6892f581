"""How much memory a device has, for the budgets that choose layouts.

`data.placement='auto'` (is the training set small enough to copy onto
every device?) and `model.conv='auto'` (do im2col's patches fit?) both ask
the same question of the same number.
"""

import os


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
