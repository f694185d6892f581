"""Lost processes of a multi-process run: the watchdog, the supervisor and
the injected faults that test them on one machine.

The slow tests run 2 real processes of 2 fake devices each under
`launch.py --supervise`, make one of them fail at a given step (killed
between rounds, killed in place of a round, or stuck inside one) and check
that every process ends on its own in bounded time, is restarted, resumes
from the last checkpoint and ends with exactly the model of a run never
interrupted.
"""

import os
import re
import signal
import sys
import tempfile
import textwrap
from unittest import mock

from absl.testing import absltest
import jax
import numpy as np
import pytest

from hier_avg import errors
from hier_avg.errors import UserError
from hier_avg.run import fault_injection
from hier_avg.run import supervisor
from hier_avg.run import watchdog
from tests.support import launcher
from tests.support import outputs


class WatchdogTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.now = 0.0
    self.hangs = []
    self.dog = watchdog.Watchdog(factor=3, min_s=5, first_s=100,
                                 clock=lambda: self.now,
                                 on_hang=self.hangs.append)
    self.dog._thread = 'not started'  # The test calls `check` itself.

  def test_bounds(self):
    self.assertEqual(self.dog.bound('a'), 100)  # The first compiles.
    with self.dog.watching('a', 'round a'):
      self.now += 30
    self.assertEqual(self.dog.bound('a'), 90)  # factor x the shortest.
    with self.dog.watching('a', 'round a'):
      self.now += 1
    self.assertEqual(self.dog.bound('a'), 5)  # At least min_s.
    with self.dog.watching('a', 'round a'):
      self.now += 4
    self.assertEqual(self.dog.bound('a'), 5)
    self.assertEqual(self.dog.bound('b'), 100)  # Kinds apart.

  def test_a_round_past_its_bound_ends_the_run(self):
    with self.dog.watching('a', 'round a'):
      self.now += 2
    with self.dog.watching('a', 'the round of steps 5..6'):
      self.now += 6
      self.dog.check()
      self.assertEqual(self.hangs, [])  # 6 s is within 3 x 2 s.
      self.now += 0.5
      self.dog.check()
    self.assertLen(self.hangs, 1)
    self.assertIn("the round of steps 5..6 has taken 6 s, past the "
                  "watchdog's bound of 6 s (the shortest of its kind before: "
                  '2.0 s)', self.hangs[0])
    self.assertNotIn('\n', self.hangs[0])
    self.dog.check()  # Nothing is timed between rounds.
    self.assertLen(self.hangs, 1)

  def test_an_elastic_run_waits_a_heartbeat_more_and_recompiles(self):
    dog = watchdog.Watchdog(factor=3, min_s=5, first_s=100,
                            clock=lambda: self.now,
                            on_hang=self.hangs.append, margin_s=60)
    dog._thread = 'not started'
    self.assertEqual(dog.bound('a'), 160)
    with dog.watching('a', 'round a'):
      self.now += 2
    self.assertEqual(dog.bound('a'), 66)  # A check may wait a heartbeat.
    with dog.watching('a', 'the round of steps 5..6'):
      self.now += 65
      dog.again()  # A process was lost: the survivors compile anew.
      self.now += 150
      dog.check()
      self.assertEqual(self.hangs, [])  # Within 100 + 60 s of `again`.
      self.now += 11
      dog.check()
    self.assertLen(self.hangs, 1)
    self.assertIn('its first, which compiles', self.hangs[0])


class SupervisorTest(absltest.TestCase):

  def _child(self, codes):
    """A command that exits with `codes[i]` on its i-th start."""
    count = self.create_tempfile().full_path
    script = textwrap.dedent(f'''
        import os, signal, sys
        with open({count!r}) as f:
          n = len(f.read())
        with open({count!r}, 'a') as f:
          f.write('x')
        code = {list(codes)!r}[n]
        if code < 0:
          os.kill(os.getpid(), -code)
        sys.exit(code)''')
    return [sys.executable, '-c', script], count

  def _starts(self, count):
    with open(count) as f:
      return len(f.read())

  def test_restarts_lost_runs_only(self):
    handler = signal.getsignal(signal.SIGTERM)
    for codes, returncode, starts in (
        # Lost (a peer, a SIGKILL, an abort), then done.
        ((errors.EXIT_PEER_LOST, -9, -6, 0), 0, 4),
        # Input refused, a diverged loss: the same command would again.
        ((errors.EXIT_BAD_INPUT,), errors.EXIT_BAD_INPUT, 1),
        ((errors.EXIT_DIVERGED,), errors.EXIT_DIVERGED, 1),
        # Lost more often than allowed: gives up with the last code.
        ((errors.EXIT_PEER_LOST,) * 5, errors.EXIT_PEER_LOST, 4),
        ((-9,) * 5, 128 + 9, 4)):
      with self.subTest(codes=codes):
        command, count = self._child(codes)
        self.assertEqual(supervisor.supervise(command, max_restarts=3),
                         returncode)
        self.assertEqual(self._starts(count), starts)
    # The supervisor's signal handlers are gone with it.
    self.assertIs(signal.getsignal(signal.SIGTERM), handler)


class FaultInjectionTest(absltest.TestCase):

  def test_parsed_from_the_environment(self):
    with mock.patch.dict(os.environ, {fault_injection.VARIABLE: ''}):
      self.assertIsNone(fault_injection.from_environment())
    with mock.patch.dict(os.environ, {
        fault_injection.VARIABLE: 'process=1,step=6,when=hang,once=/x'}):
      self.assertEqual(fault_injection.from_environment(),
                       fault_injection.Fault(1, 6, 'hang', '/x'))
    for text in ('process=1,step=6', 'process=1,step=6,when=later',
                 'process=1,step=6,when=hang,color=red', 'step'):
      with mock.patch.dict(os.environ,
                                    {fault_injection.VARIABLE: text}):
        with self.assertRaisesRegex(UserError, 'HIER_AVG_INJECT_FAULT'):
          fault_injection.from_environment()


# 12 steps on 2 processes of 2 devices (a node each), global averagings
# every 4 steps across them; checkpoints every 4 steps.
STEPS = 12
FLAGS = (*launcher.FAST, '--config.hier.k1=2', '--config.hier.k2=2',
         f'--config.train.steps={STEPS}', '--config.train.log_every=1',
         '--config.train.eval_every=4', '--config.train.checkpoint_every=4',
         '--config.run.watchdog_min_s=3', '--config.run.watchdog_factor=3')
DEADLINE_S = 400


def _run_pair(workdir, *flags, env=None, logs=None):
  port = launcher.free_port()
  logs = logs or [None, None]
  runs = [launcher.start(
      workdir, *FLAGS, *flags, f'--coordinator_address=127.0.0.1:{port}',
      '--num_processes=2', f'--process_id={i}', devices=2, env=env,
      log=logs[i]) for i in range(2)]
  return launcher.finish_all(runs, DEADLINE_S), runs


@pytest.mark.slow
class RealFailuresTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.reference = os.path.join(tempfile.mkdtemp(), 'uninterrupted')
    _, runs = _run_pair(cls.reference)
    assert all(r.returncode == 0 for r in runs), [r.output() for r in runs]
    cls.model = outputs.final_model(cls.reference)

  def _failing_pair(self, fault: str):
    """The supervised pair with `fault`: each process's log."""
    tmp = self.create_tempdir().full_path
    workdir = os.path.join(tmp, 'run')
    env = {fault_injection.VARIABLE:
           f'{fault},once={os.path.join(tmp, "fired")}'}
    logs = [os.path.join(tmp, f'log{i}.txt') for i in range(2)]
    texts, runs = _run_pair(workdir, '--supervise', env=env, logs=logs)
    for run, text in zip(runs, texts):
      self.assertEqual(run.returncode, 0, text[-3000:])
      self.assertIn('supervisor: the run ended with', text)
    self.assertTrue(os.path.exists(os.path.join(tmp, 'fired')))
    # Every step once in the rows; the model of the uninterrupted run.
    self.assertEqual([r['step'] for r in outputs.metrics_rows(workdir)],
                     list(range(1, STEPS + 1)))
    jax.tree.map(np.testing.assert_array_equal,
                 outputs.final_model(workdir), self.model)
    return texts

  def _resumed_at(self, text) -> int:
    return int(re.search(r'resuming at step (\d+)', text).group(1))

  def test_a_process_stuck_in_a_collective(self):
    # Process 1 never takes part in the round of step 8 (a global
    # averaging) and stays up: process 0 waits inside the collective until
    # its watchdog ends it (3 x the shortest such round, at least 3 s); the
    # coordination service it ran then takes process 1 down.
    log0, log1 = self._failing_pair('process=1,step=8,when=hang')
    found = re.search(r"has taken (\d+) s, past the watchdog's bound of "
                      r'(\d+) s', log0)
    self.assertIsNotNone(found, log0[-3000:])
    took, bound = map(int, found.groups())
    self.assertLessEqual(took, bound + 1)  # Polled every 0.5 s.
    self.assertIn('SIGABRT', log1)
    self.assertEqual(self._resumed_at(log0), 4)

  def test_a_process_killed_in_place_of_a_round(self):
    log0, _ = self._failing_pair('process=1,step=6,when=during')
    self.assertIn('error: lost contact with another process', log0)
    self.assertEqual(self._resumed_at(log0), 4)

  def test_process_0_killed(self):
    # Process 0 runs the coordination service: the other fails in its
    # next collective, or is aborted by JAX's client. Only the steps after
    # the last checkpoint (step 8) are taken again.
    _, log1 = self._failing_pair('process=0,step=11,when=between')
    self.assertTrue('error: lost contact with another process' in log1 or
                    'ended with SIGABRT' in log1, log1[-3000:])
    self.assertEqual(self._resumed_at(log1), 8)


if __name__ == '__main__':
  absltest.main()
