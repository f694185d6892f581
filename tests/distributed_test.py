"""distributed.initialize: which flags reach jax.distributed, which are refused.

jax.distributed.initialize is replaced here, so nothing joins a run; the
runs themselves are in tests/multihost_test.py and tests/cluster_test.py.
"""

from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax

from hier_avg.errors import UserError
from hier_avg.run import distributed


class InitializeTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    # Neither joins a run nor switches this process's CPU collectives.
    self.join = self.enter_context(
        mock.patch.object(jax.distributed, 'initialize', autospec=True))
    self.enter_context(mock.patch.object(jax.config, 'update'))

  @parameterized.named_parameters(
      ('coordinator', ('10.0.0.1:1234', None, None)),
      ('num_processes', (None, 2, None)),
      ('process_id', (None, None, 0)),
      ('all_three', ('10.0.0.1:1234', 2, 0)),
  )
  def test_auto_refuses_explicit_flags(self, explicit):
    with self.assertRaisesRegex(UserError, '--distributed_auto detects the '
                                'cluster itself; drop --coordinator_address'):
      distributed.initialize(*explicit, auto=True)
    self.join.assert_not_called()

  @parameterized.named_parameters(
      ('half_the_flags', (None, 2, 0), 'needs all of --coordinator_address'),
      ('no_processes', ('h:1', 0, 0), '--num_processes=0 must be >= 1'),
      ('rank_too_large', ('h:1', 2, 2), r'--process_id=2 must be in \[0, 2\)'),
      ('negative_rank', ('h:1', 2, -1), r'--process_id=-1 must be in'),
      ('no_port', ('10.0.0.1', 2, 0), "'10.0.0.1' must be host:port"),
  )
  def test_explicit_flags_checked_before_joining(self, explicit, message):
    with self.assertRaisesRegex(UserError, message):
      distributed.initialize(*explicit)
    self.join.assert_not_called()

  def test_no_flags_is_one_process(self):
    distributed.initialize(None, None, None)
    self.join.assert_not_called()

  def test_auto_leaves_everything_to_jax(self):
    distributed.initialize(None, None, None, auto=True)
    self.join.assert_called_once()
    self.assertEqual(self.join.call_args.args, (None, None, None))

  def test_explicit_flags_passed_on(self):
    distributed.initialize('10.0.0.1:1234', 2, 1)
    self.assertEqual(self.join.call_args.args, ('10.0.0.1:1234', 2, 1))
    # `run.heartbeat_s`'s default, where no config gives one.
    self.assertEqual(self.join.call_args.kwargs['heartbeat_timeout_seconds'],
                     60)

  def test_no_cluster_found_is_one_user_error(self):
    # What jax raises when --distributed_auto finds no cluster.
    self.join.side_effect = ValueError('coordinator_address should be '
                                       'defined.')
    with self.assertRaisesRegex(
        UserError, 'could not join the multi-process run: coordinator_address'
        ' should be defined; --distributed_auto needs every process started '
        r'by the cluster \(a TPU pod, srun in a SLURM job'):
      distributed.initialize(None, None, None, auto=True)

  def test_failed_join_with_flags_names_them(self):
    self.join.side_effect = RuntimeError('DEADLINE_EXCEEDED: barrier\nmore')
    with self.assertRaisesRegex(
        UserError, 'could not join the multi-process run: DEADLINE_EXCEEDED: '
        'barrier; check that every process got the same '
        '--coordinator_address'):
      distributed.initialize('10.0.0.1:1234', 2, 1)


if __name__ == '__main__':
  absltest.main()
