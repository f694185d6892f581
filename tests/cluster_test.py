"""--distributed_auto: JAX finds the other processes of a SLURM job step.

Two launch.py processes get, instead of --coordinator_address,
--num_processes and --process_id, the variables srun sets for the 2 tasks
of a job step on one node. They must join one 2-process run that trains
exactly like the same 2 processes joined by explicit flags (which
tests/multihost_test.py checks against one process). Processes outliving
the deadline are killed, so a hang fails the test instead of stalling it.
"""

import os
import random
import socket

from absl.testing import absltest
import pytest
import jax
import numpy as np

from tests.support import launcher
from tests.support import outputs

# Multi-process runs of launch.py.
pytestmark = pytest.mark.slow

DEADLINE_S = 400
CONFIG = (*launcher.FAST, '--config.train.steps=8',
          '--config.train.log_every=2', '--config.train.eval_every=4',
          '--config.hier.k1=2', '--config.hier.k2=2')
NODE = 'localhost'  # The one node of the job step.


def no_cluster() -> dict:
  """None for each inherited variable that could tell jax of a cluster.

  `launcher.start(env=...)` removes them: jax.distributed.initialize()
  reads them (Open MPI's before SLURM's), and tests run inside a SLURM job
  or under mpirun must not join that.
  """
  read_by_jax = ('SLURM_', 'OMPI_', 'JAX_COORDINATOR_', 'JAX_LOCAL_DEVICE_IDS',
                 'KUBERNETES_SERVICE_HOST')
  return {name: None for name in os.environ if name.startswith(read_by_jax)}


def coordinator_port(job_id: int) -> int:
  """The port jax's SlurmCluster derives from the job id, in 61440..65535."""
  return 65535 - 2**12 + 1 + job_id % 2**12


def _port_is_free(port: int) -> bool:
  with socket.socket() as s:
    try:
      s.bind(('', port))
    except OSError:
      return False
  return True


def free_job_id() -> int:
  """A made-up SLURM job id whose coordinator port is free now."""
  rng = random.Random()
  for _ in range(200):
    job_id = 7_000_000 + rng.randrange(2**12)
    if _port_is_free(coordinator_port(job_id)):
      return job_id
  raise AssertionError('no free port in 61440..65535 for a coordinator.')


def slurm_task(job_id: int, rank: int) -> dict:
  """What srun sets for task `rank` of 2 on one node, as jax reads it.

  All that jax's SlurmCluster reads: the job id (the coordinator port comes
  from it), the step's node list (its first node runs the coordinator), the
  number of tasks, the task's rank and its rank on its node.
  """
  return {'SLURM_JOB_ID': str(job_id), 'SLURM_STEP_NODELIST': NODE,
          'SLURM_NTASKS': '2', 'SLURM_PROCID': str(rank),
          'SLURM_LOCALID': str(rank)}


def results(rows) -> list[dict]:
  """What a run computed, row by row (no timings)."""
  keys = ('step', 'epoch', 'train_loss', 'learning_rate', 'local_averagings',
          'global_averagings', 'test_loss', 'test_accuracy')
  return [{k: r.get(k) for k in keys} for r in rows]


class SlurmTest(absltest.TestCase):

  def test_two_tasks_join_one_run_like_explicit_flags(self):
    tmp = self.create_tempdir().full_path
    job_id = free_job_id()
    port = coordinator_port(job_id)
    auto_logs = [os.path.join(tmp, f'auto{i}.txt') for i in range(2)]
    # --verbose_logs: jax's own lines say where each process connected.
    auto = [launcher.start(os.path.join(tmp, 'auto'), *CONFIG,
                           '--distributed_auto', '--verbose_logs', devices=4,
                           log=auto_logs[i],
                           env={**no_cluster(), **slurm_task(job_id, i)})
            for i in range(2)]
    auto_texts = launcher.finish_all(auto, DEADLINE_S, check=True)

    explicit_port = launcher.free_port()
    explicit = [launcher.start(
        os.path.join(tmp, 'explicit'), *CONFIG,
        f'--coordinator_address=127.0.0.1:{explicit_port}',
        '--num_processes=2', f'--process_id={i}', devices=4,
        log=os.path.join(tmp, f'explicit{i}.txt'), env=no_cluster())
                for i in range(2)]
    launcher.finish_all(explicit, DEADLINE_S, check=True)

    # Both tasks went to the coordinator the job id names, and their 4 + 4
    # devices hold one learner grid: one process of 4 could hold only
    # {'node': 1, 'local': 4} of it.
    for text in auto_texts:
      self.assertIn(f'Connecting to JAX distributed service on {NODE}:{port}',
                    text)
    self.assertIn("learner grid {'node': 2, 'local': 4} on mesh {'node': 2, "
                  "'local': 4}", auto_texts[0])
    auto_rows, auto_model = outputs.rows_and_model(os.path.join(tmp, 'auto'))
    explicit_rows, explicit_model = outputs.rows_and_model(
        os.path.join(tmp, 'explicit'))
    self.assertEqual([r['step'] for r in auto_rows], [2, 4, 6, 8])
    self.assertEqual([r['step'] for r in auto_rows if 'test_accuracy' in r],
                     [4, 8])
    # The same programs on the same devices: equal to the last bit.
    self.assertEqual(results(auto_rows), results(explicit_rows))
    self.assertEqual(jax.tree.structure(auto_model),
                     jax.tree.structure(explicit_model))
    jax.tree.map(np.testing.assert_array_equal, auto_model, explicit_model)

  def test_outside_a_cluster_one_line(self):
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    result = launcher.run(workdir, *launcher.FAST, '--distributed_auto',
                          env=no_cluster())
    self.assertEqual(result.returncode, 2, result.stderr[-2000:])
    errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
    self.assertLen(errors, 1, result.stderr)
    self.assertIn('--distributed_auto needs every process started by the '
                  'cluster', errors[0])
    self.assertNotIn('Traceback', result.stderr)
    self.assertFalse(os.path.exists(workdir))


if __name__ == '__main__':
  absltest.main()
