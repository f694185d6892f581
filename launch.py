r"""Trains with hierarchical averaging SGD.

  python launch.py --config=configs/cifar10.py --workdir=/tmp/cifar10 \
      --config.hier.k1=8

On several hosts, the same command on each, plus (README: "Running on
several hosts") --coordinator_address=HOST0:PORT --num_processes=N
--process_id=RANK, or --distributed_auto where the platform tells JAX.

A problem with the input (a config value, the data, the devices, the workdir)
ends the run with one line on stderr and exit code 2; a loss that diverges,
with one line and exit code 3; a multi-process run that lost a process,
with one line and exit code 4 (`--supervise` restarts it). Rerunning the
same command on the same workdir resumes from the newest checkpoint;
SIGTERM or SIGINT saves one and exits with code 0.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from hier_avg import config_keys
from hier_avg import errors
from hier_avg import train
from hier_avg.errors import UserError
from hier_avg.run import cpu_devices
from hier_avg.run import distributed
from hier_avg.run import elastic
from hier_avg.run import logs
from hier_avg.run import supervisor

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'A configs/*.py file, optionally with :preset.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for all outputs.')
flags.mark_flags_as_required(['config', 'workdir'])
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None,
    'Multi-process runs: host:port of process 0, the same for every process.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Multi-process runs: how many processes (hosts).')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'Multi-process runs: this process\'s rank.')
_CPU_DEVICES = flags.DEFINE_integer(
    'cpu_devices', None,
    'Fake CPU devices for a run on CPU (default: XLA_FLAGS\' count, else '
    f'{cpu_devices.DEFAULT}; at most {cpu_devices.MAXIMUM}).', lower_bound=1,
    upper_bound=cpu_devices.MAXIMUM)
_VERBOSE_LOGS = flags.DEFINE_bool(
    'verbose_logs', False,
    'Also show the INFO lines of the libraries underneath (orbax, jax).')
_DISTRIBUTED_AUTO = flags.DEFINE_bool(
    'distributed_auto', False,
    'Multi-process runs: let JAX detect the cluster (TPU pod, SLURM).')
_SUPERVISE = flags.DEFINE_bool(
    'supervise', False,
    'Run the training as a child process and start it again when a process '
    'of the run is lost (killed, or exit code 4): it resumes from the last '
    'checkpoint. Give it on every host.')
_MAX_RESTARTS = flags.DEFINE_integer(
    'max_restarts', 3, 'With --supervise: restarts before giving up.',
    lower_bound=0)


def _parse_flags(argv):
  """absl's flag parsing; a bad flag or config key is one line, exit 2."""
  try:
    for arg in argv[1:]:
      if arg.startswith('--config.'):
        config_keys.require_known(arg[len('--config.'):].partition('=')[0])
    return flags.FLAGS(argv)
  except UserError as e:
    _exit_with(e)
  except flags.Error as e:
    _exit_with(UserError(f'{str(e).partition(":")[0]}: {_root_of(e)}'))


def _root_of(error: Exception) -> str:
  """What a failed flag or config file says is wrong, in one line: a
  config file raises inside ml_collections, whose messages carry a whole
  traceback or a list of paths tried; the first cause's last line is the
  reason."""
  while error.__cause__ is not None or error.__context__ is not None:
    error = error.__cause__ or error.__context__
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[-1] if lines else type(error).__name__


def _load_config():
  """The --config file's config; one line, exit 2, if it cannot load."""
  try:
    config = _CONFIG.value
    config.keys()  # A file that failed to load raises only when used.
    return config
  except Exception as e:  # pylint: disable=broad-except
    _exit_with(UserError(
        f'--config={flags.FLAGS["config"].config_filename} could not be '
        f'loaded: {_root_of(e)}; give a configs/*.py file, e.g. '
        'configs/cifar10.py:cpu (presets after the colon).'))


def _exit_with(error: Exception, code: int = errors.EXIT_BAD_INPUT) -> None:
  logging.flush()
  print(f'error: {error}', file=sys.stderr)
  sys.exit(code)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _SUPERVISE.value:
    # The same command without the supervisor (absl: the last flag wins).
    sys.exit(supervisor.supervise(
        [sys.executable, os.path.abspath(sys.argv[0]), *sys.argv[1:],
         '--nosupervise'], _MAX_RESTARTS.value))
  logs.quiet_third_party(not _VERBOSE_LOGS.value)
  cpu_devices.configure(_CPU_DEVICES.value)  # Before the backend starts.
  try:
    config = _load_config()
    config_keys.validate(config)  # Its `run` keys start the runtime.
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                           _PROCESS_ID.value, _DISTRIBUTED_AUTO.value,
                           config.run.heartbeat_s, config.run.elastic)
    if config.run.elastic:
      elastic.refuse_rejoin()
    train.train_and_evaluate(config, _WORKDIR.value)
    if config.run.elastic:
      elastic.leave()
  except train.TrainingDiverged as e:
    _exit_with(e, errors.EXIT_DIVERGED)
  except UserError as e:
    _exit_with(e)
  except errors.PeerLost as e:
    _exit_peer_lost(str(e))
  except train.Preempted as e:
    logging.flush()
    print(f'preempted: {e}', file=sys.stderr)
    if config.run.elastic:
      elastic.leave()
    sys.exit(0)
  except Exception as e:  # pylint: disable=broad-except
    _exit_on_failure(e)


def _exit_on_failure(e: Exception) -> None:
  """A failure the user can act on, in one line; else the traceback."""
  if errors.out_of_space(e):
    _exit_with(UserError(
        f'no space left to write in --workdir={_WORKDIR.value} '
        f'({errors.out_of_space(e)}); free space (or raise the quota) and '
        'rerun the same command: the run resumes from its newest complete '
        'checkpoint.'))
  if not isinstance(e, (jax.errors.JaxRuntimeError, TimeoutError)):
    raise e
  if errors.out_of_memory(e):
    _exit_with(errors.out_of_memory(e))
  if jax.process_count() == 1:
    raise e
  # A collective, or a checkpoint's commit barrier, failed because a peer
  # process died.
  _exit_peer_lost(_first_line(e))


def _exit_peer_lost(reason: str) -> None:
  """Exit code 4, at once: the runtime's shutdown barrier at exit would
  wait for the dead peer's heartbeat timeout and then abort."""
  logging.flush()
  print(f'error: lost contact with another process ({reason}); restart '
        'every process with the same command (launch.py --supervise does) '
        'to resume from the last checkpoint.', file=sys.stderr, flush=True)
  os._exit(errors.EXIT_PEER_LOST)  # pylint: disable=protected-access


def _first_line(error: Exception) -> str:
  lines = str(error).strip().splitlines()
  return lines[0][:300] if lines else type(error).__name__


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
