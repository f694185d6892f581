"""`launch.py` as a new process: the one way the tests start and end runs.

Every run gets the same environment (this checkout on PYTHONPATH, its own
fake CPU device count, the session's compilation cache), plus the variables
a test sets (a cluster's, say); its output goes to a log file, or, without
one, its stderr to a pipe. `finish` waits for runs and returns their output;
past the deadline it kills them all, so a hang fails the test instead of
stalling the suite.
"""

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from tests.support.devices import NUM_CPU_DEVICES, with_count
from tests.support import outputs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CPU_CONFIG = 'configs/cifar10.py:cpu'
DEADLINE_S = 300

# Small synthetic data: a run of a few steps takes seconds.
FAST = ('--config.data.name=synthetic',
        '--config.data.synthetic_train_examples=1024',
        '--config.data.synthetic_test_examples=256',
        '--config.data.batch_size=8')


def python_env(**variables) -> dict:
  """The environment of a Python process that imports this checkout."""
  return dict(os.environ, PYTHONPATH=REPO, **variables)


_compilation_cache = []


def _compilation_cache_dir() -> str:
  """One persistent compilation cache per test session, removed at exit."""
  if not _compilation_cache:
    path = tempfile.mkdtemp(prefix='hier_avg_tests_jax_cache_')
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    _compilation_cache.append(path)
  return _compilation_cache[0]


class Run(subprocess.Popen):
  """A running `launch.py`; `log` is the file its output goes to, or None."""

  def __init__(self, args, log, **kwargs):
    # Its own session, so that `kill_and_wait` ends a supervised run's
    # child with it.
    super().__init__(args, start_new_session=True, **kwargs)
    self.log = log
    self._stderr = None

  def wait_for_end(self, timeout) -> None:
    """`wait`, reading a piped stderr meanwhile (a full pipe blocks a run)."""
    if self.log is None:
      if self._stderr is None:
        self._stderr = self.communicate(timeout=timeout)[1]
    else:
      self.wait(timeout=timeout)

  def kill_and_wait(self) -> None:
    if self.poll() is None:
      try:
        os.killpg(self.pid, signal.SIGKILL)
      except ProcessLookupError:  # It ended meanwhile.
        pass
    self.wait_for_end(None)

  def output(self) -> str:
    """All the ended run wrote: its stderr, or its log."""
    if self.log is None:
      self.wait_for_end(None)
      return self._stderr
    with open(self.log) as f:
      return f.read()


def start(workdir, *flags, devices=NUM_CPU_DEVICES, config=CPU_CONFIG,
          log=None, env=None, max_file_bytes=None) -> Run:
  """Starts `launch.py` on `devices` fake CPU devices.

  Args:
    workdir: the run's --workdir.
    *flags: more command-line flags (config overrides, multi-process flags).
    devices: fake CPU devices of this process.
    config: the config file (and preset), relative to the repository.
    log: a file that receives the run's stdout and stderr; None: stderr is
      piped for `finish` to return, stdout discarded.
    env: environment variables of this run, set over the usual ones; a
      value None removes the variable (e.g. one inherited from a cluster).
    max_file_bytes: the largest file the run may write (RLIMIT_FSIZE): a
      write past it fails as on a full disk (EFBIG, not a signal).
  Returns:
    The running process.
  """
  environment = python_env(
      XLA_FLAGS=with_count(devices, os.environ.get('XLA_FLAGS', '')),
      # The processes of a session share their compiled programs: a
      # resumed run, or a second run of the same config, loads what an
      # earlier one compiled instead of compiling it again (half of a short
      # run's time). Same programs, same results. An entry read while
      # another process writes it fails to load with a warning and is
      # compiled instead.
      JAX_COMPILATION_CACHE_DIR=_compilation_cache_dir(),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  for name, value in (env or {}).items():
    if value is None:
      environment.pop(name, None)
    else:
      environment[name] = value
  args = [sys.executable, os.path.join(REPO, 'launch.py'),
          f'--config={os.path.join(REPO, config)}', f'--workdir={workdir}',
          *flags]
  if max_file_bytes is not None:
    # Through a small Python that sets the limit and execs the run: a
    # preexec_fn would fork this process, which runs JAX's threads.
    args = [sys.executable, '-c', _LIMIT_FILE_SIZE, str(max_file_bytes),
            *args]
  if log is None:
    return Run(args, None, env=environment, cwd=REPO,
               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  with open(log, 'w') as f:  # The process holds its own copy.
    return Run(args, log, env=environment, cwd=REPO, stdout=f,
               stderr=subprocess.STDOUT)


# argv: the byte limit, then the command. Files end at the limit; a write
# past it fails with EFBIG instead of killing the process (SIGXFSZ stays
# ignored through exec).
_LIMIT_FILE_SIZE = '''
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
os.execv(sys.argv[2], sys.argv[2:])
'''


def _kill_all(runs) -> str:
  """Kills every run; the ends of their outputs."""
  for run in runs:
    run.kill_and_wait()
  return '\n'.join(f'--- {run.log or "stderr"}:\n{run.output()[-2000:]}'
                   for run in runs)


def finish_all(runs, timeout=DEADLINE_S, check=False) -> list[str]:
  """Waits for every run to end; their outputs (stderr, or the log's text).

  Raises:
    AssertionError: a run still ran `timeout` s after the call (all of
      them are then killed), or, with `check`, one exited with an error.
  """
  deadline = time.monotonic() + timeout
  try:
    for run in runs:
      run.wait_for_end(max(deadline - time.monotonic(), 0))
  except subprocess.TimeoutExpired:
    raise AssertionError(f'a run still ran after {timeout} s; killed.\n'
                         + _kill_all(runs)) from None
  texts = [run.output() for run in runs]
  for run, text in zip(runs, texts):
    if check and run.returncode != 0:
      raise AssertionError(f'exit code {run.returncode}:\n{text[-3000:]}')
  return texts


def finish(run: Run, timeout=DEADLINE_S, check=False) -> str:
  """`finish_all` of one run: its output."""
  return finish_all([run], timeout, check)[0]


def run(workdir, *flags, timeout=DEADLINE_S,
        **kwargs) -> subprocess.CompletedProcess:
  """`start` to the end: the exit code and stderr as a CompletedProcess."""
  proc = start(workdir, *flags, **kwargs)
  stderr = finish(proc, timeout)
  return subprocess.CompletedProcess(proc.args, proc.returncode, None, stderr)


def wait_for(condition, what: str, runs, timeout=DEADLINE_S):
  """Waits until `condition()` gives a true value, and returns it.

  Raises:
    AssertionError: one of `runs` ended first, or `timeout` s went by
      (`what` names the awaited event); all of them are killed first.
  """
  deadline = time.monotonic() + timeout
  while (time.monotonic() < deadline and
         all(run.poll() is None for run in runs)):
    value = condition()
    if value:
      return value
    time.sleep(0.005)
  raise AssertionError(f'the run ended or hung before {what}.\n'
                       + _kill_all(runs))


def wait_for_step(workdir, step, runs, timeout=DEADLINE_S) -> int:
  """Waits until the run in `workdir` has logged `step` or a later one;
  returns the last step logged then (`wait_for`)."""

  def logged():
    rows = outputs.metrics_rows(workdir)
    return rows[-1]['step'] if rows and rows[-1]['step'] >= step else 0

  return wait_for(logged, f'step {step}', runs, timeout)


def free_port() -> int:
  """A TCP port free on 127.0.0.1 now (for a coordinator)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]
