"""Joining a multi-process run on JAX's own distributed runtime.

One process per host. Every process runs the same program on its own
devices; `jax.distributed` connects them, and the global device list then
spans all hosts. On CPU the collectives between processes go through gloo.
"""

import jax
from jax.experimental import multihost_utils

from hier_avg import config_keys
from hier_avg.errors import UserError, require

# How long a process waits for the others to join.
INITIALIZATION_TIMEOUT_S = 120


def initialize(coordinator_address: str | None, num_processes: int | None,
               process_id: int | None, auto: bool = False,
               heartbeat_s: int = config_keys.BY_NAME[
                   'run.heartbeat_s'].default,
               elastic: bool = False) -> None:
  """Connects this process to the others; no-op for a single process.

  Args:
    coordinator_address: 'host:port' of process 0, reachable by all.
    num_processes: how many processes take part.
    process_id: this process's rank, 0 .. num_processes - 1.
    auto: let JAX detect the cluster (TPU pods, SLURM, Open MPI) instead.
    heartbeat_s: silence after which a peer is taken for dead
      (`run.heartbeat_s`).
    elastic: the others survive a process's death (`run.elastic`):
      JAX's recoverability, so that `live_devices` can tell them.
  """
  explicit = (coordinator_address, num_processes, process_id)
  if auto:
    require(all(v is None for v in explicit),
            '--distributed_auto detects the cluster itself; drop '
            '--coordinator_address, --num_processes and --process_id.')
  elif all(v is None for v in explicit):
    return
  else:
    require(all(v is not None for v in explicit),
            'a multi-process run needs all of --coordinator_address, '
            '--num_processes and --process_id.')
    require(num_processes >= 1, f'--num_processes={num_processes} must be '
            '>= 1.')
    require(0 <= process_id < num_processes,
            f'--process_id={process_id} must be in [0, {num_processes}).')
    require(':' in coordinator_address,
            f'--coordinator_address={coordinator_address!r} must be '
            'host:port, e.g. 10.0.0.1:1234.')
  # Only the CPU client reads this; accelerators keep their own collectives
  # (NCCL, ICI). It must be set before the first backend is created.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if elastic:
    jax.config.update('jax_enable_recoverability', True)
  try:
    jax.distributed.initialize(
        coordinator_address, num_processes, process_id,
        initialization_timeout=INITIALIZATION_TIMEOUT_S,
        heartbeat_timeout_seconds=heartbeat_s)
  except (RuntimeError, ValueError) as e:
    first_line = (str(e).strip().splitlines() or [''])[0].rstrip('.')
    if auto:
      hint = ('--distributed_auto needs every process started by the '
              'cluster (a TPU pod, srun in a SLURM job, Open MPI\'s '
              'mpirun); elsewhere pass --coordinator_address, '
              '--num_processes and --process_id.')
    else:
      hint = ('check that every process got the same --coordinator_address '
              'and --num_processes and that process 0 is running.')
    raise UserError(f'could not join the multi-process run: {first_line}; '
                    f'{hint}') from None


def is_main_process() -> bool:
  """Process 0 alone writes files, so several hosts never clash."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (no-op alone)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
