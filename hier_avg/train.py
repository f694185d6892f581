"""`train_and_evaluate(config, workdir)`: the whole run, top to bottom.

Stages: check the config -> lay out learners on devices -> load data ->
take the workdir (one run at a time) -> build learner and engine -> create
the sharded state, or resume it from the newest checkpoint -> train round by
round with the averaging schedule, logging, evaluating the globally averaged
model and checkpointing -> write the summary, plots and final model.
"""

import math
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from hier_avg.run import checkpoint
from hier_avg import config_validation
from hier_avg.run import export
from hier_avg.data import feeds
from hier_avg import models
from hier_avg.core import optim
from hier_avg.core import outer
from hier_avg.runtime import execution
from hier_avg.core import policies
from hier_avg.run import preemption
from hier_avg.run import workdirs
from hier_avg.algorithms.asgd import AsgdEngine
from hier_avg.runtime.engine import Engine
from hier_avg.errors import UserError
from hier_avg.core.learner import Learner
from hier_avg.run.metrics import MetricsWriter, read_summary
from hier_avg.core.schedule import hier_schedule
from hier_avg.core.topology import hier_topology


class TrainingDiverged(UserError):
  """The loss or the parameters became NaN or infinite."""


class Preempted(Exception):
  """SIGTERM/SIGINT stopped the run after saving a checkpoint."""


def total_steps(train_config, steps_per_epoch: int) -> int:
  if train_config.steps:
    return train_config.steps
  return max(1, math.ceil(train_config.epochs * steps_per_epoch))


def _check_finite(losses: list[tuple[int, np.ndarray]]) -> None:
  for step, loss in losses:
    bad = np.flatnonzero(~np.isfinite(loss))
    if bad.size:
      raise TrainingDiverged(
          f'training diverged: non-finite loss at step {step} (learner '
          f'{bad[0]}); lower opt.lr or add opt.warmup_epochs.')


@jax.jit
def _all_finite(params):
  return jnp.all(jnp.stack([jnp.isfinite(x).all()
                            for x in jax.tree.leaves(params)]))


def build_engine(config, data, topology, num_steps, steps_per_epoch):
  """The learner (model, optimizer, data normalization) and its engine."""
  hier = config.hier
  lr_schedule = optim.learning_rate_schedule(config.opt, steps_per_epoch,
                                             num_steps)
  # ASGD's server makes P optimizer updates per step; the schedule is in
  # steps.
  updates_per_step = topology.num_learners if hier.algorithm == 'asgd' else 1
  platform = topology.mesh.devices.flat[0].platform
  pack = execution.resolve_pack(config.mesh.pack, platform)
  conv = execution.resolve_conv(config.model.conv, pack,
                              topology.learners_per_device)
  model = models.get_model(config.model.name, data.num_classes,
                           models.make_layers(conv, config.model.dtype),
                           config.model.stem)
  tx = optim.make_optimizer(
      config.opt, lambda count: lr_schedule(count // updates_per_step))
  # Streamed images come augmented from the host (`streaming.py`).
  augment_on_device = config.data.augment and not feeds.is_streamed(
      config.data)
  learner = Learner(model, tx, data.mean, data.std, augment_on_device)
  if hier.algorithm == 'asgd':
    engine = AsgdEngine(learner, topology, hier.staleness,
                        config.mesh.round_loop, config.mesh.max_unrolled_steps,
                        pack)
  else:
    engine = Engine(learner, topology, hier_schedule(hier.k1, hier.k2),
                    policies.averaged_parts(hier.batch_stats, hier.opt_state),
                    config.mesh.round_loop, config.mesh.max_unrolled_steps,
                    pack, outer.make_outer_optimizer(hier),
                    reset_opt_state=hier.opt_state == 'reset')
  logging.info('hier_avg: learners %s-packed, %s convolutions, %s rounds, '
               '%s compute', engine.pack, conv, engine.round_loop,
               config.model.dtype)
  return engine, lr_schedule


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains with Hier-AVG as `config` says; returns the summary it writes.

  Rerunning the same command on the same workdir resumes from the newest
  checkpoint. Raises `Preempted` after SIGTERM/SIGINT (a checkpoint saved).
  """
  # ---- Check the config and lay out the learners -----------------------
  config_validation.validate(config)
  hier = config.hier
  topology = hier_topology(hier.num_learners, hier.group_size,
                           config.mesh.node_devices, config.mesh.local_devices)
  algorithm = (f'simulated ASGD with staleness {hier.staleness}'
               if hier.algorithm == 'asgd' else
               hier_schedule(hier.k1, hier.k2).describe())
  workdirs.check(workdir)
  logging.info('hier_avg: %s; %s', topology.describe(), algorithm)

  # ---- Data (before the workdir: bad data must leave it untouched) --------
  feed = feeds.load(config, topology.num_learners)

  # ---- Workdir: created, and held by this run alone ----------------------
  workdir_lock = None
  if jax.process_index() == 0:
    workdirs.prepare(workdir)
    workdir_lock = workdirs.Lock(workdir)
  try:
    return _run(config, workdir, topology, feed)
  finally:
    if workdir_lock is not None:
      workdir_lock.release()


def _run(config, workdir, topology, feed) -> dict:
  """`train_and_evaluate` once the config, data and workdir are in hand."""
  hier = config.hier
  data = feed.data
  steps_per_epoch = feed.steps_per_epoch
  num_steps = total_steps(config.train, steps_per_epoch)

  # ---- Checkpoints -------------------------------------------------------
  checkpoints = checkpoint.Checkpoints(workdir,
                                       config.train.keep_checkpoints)

  # ---- Learner, engine and state (fresh, or resumed) ---------------------
  engine, lr_schedule = build_engine(config, data, topology, num_steps,
                                     steps_per_epoch)
  schedule = engine.schedule
  state = engine.init_state(config.seed, data.image_shape)
  fingerprint = checkpoint.fingerprint(config)
  restored = checkpoints.restore(
      state, lambda record: checkpoint.check_fingerprint(
          record['fingerprint'], fingerprint, checkpoints.directory))
  if restored is not None:
    state, _ = restored
  first_step = int(state.step)
  if first_step >= num_steps:
    checkpoints.close()
    logging.info('hier_avg: the run in %s already reached step %d of %d; '
                 'nothing to do.', workdir, first_step, num_steps)
    return read_summary(workdir)
  if first_step:
    logging.info('hier_avg: resuming at step %d from %s', first_step,
                 checkpoints.directory)
  feed.start(engine, first_step)
  level_costs = engine.communication(state)
  # XLA:CPU collectives across fake devices can deadlock when several steps
  # with a pmean are in flight; waiting after each averaging step avoids it.
  wait_after_averaging = topology.mesh.devices.flat[0].platform == 'cpu'

  # ---- Train ---------------------------------------------------------------
  # Rows after the checkpoint belong to steps that are about to be redone.
  writer = MetricsWriter(workdir, keep_until_step=first_step)
  images_per_step = topology.num_learners * config.data.batch_size
  # Wall time goes on from the checkpoint's row, so a resumed run's clock
  # counts the time spent before the interruption too.
  start = time.perf_counter() - (writer.rows[-1]['wall_s'] if writer.rows
                                 else 0.0)
  train_time, train_images_seen = 0.0, 0
  pending = []  # (first step, per-step per-learner losses) of each round.
  last_eval, last_loss = {}, float('nan')

  def counters(step):
    """Averagings, all-reduces and bytes per level in the first `step`s."""
    row = {}
    for name, events in engine.event_counts(step).items():
      row[f'{name}_{engine.event_noun}'] = events
      row[f'{name}_collectives'] = events * level_costs[name].collectives
      row[f'{name}_bytes_per_learner'] = (
          events * level_costs[name].bytes_per_learner)
    row['bytes_averaged_per_learner'] = sum(
        v for k, v in row.items() if k.endswith('_bytes_per_learner'))
    return row

  def epoch(step):
    return step / steps_per_epoch

  def save_checkpoint(state, step):
    # Never keep a diverged state: the last good checkpoint must stay good.
    if not bool(_all_finite(state.params)):
      raise TrainingDiverged(
          f'training diverged: non-finite parameters after step {step}; '
          'lower opt.lr or add opt.warmup_epochs.')
    checkpoints.save(state, {'step': step, 'fingerprint': fingerprint})

  try:
    with preemption.stop_on_signals() as stop:
      segment_start = time.perf_counter()
      checkpoint_every = config.train.checkpoint_every
      cut_every = (config.train.log_every, config.train.eval_every,
                   checkpoint_every, engine.max_round_length,
                   feed.max_round_length)
      for round_ in schedule.rounds(first_step, num_steps, cut_every):
        state, loss = engine.train_round(
            round_.level, round_.length, feed.streamed)(
                state, *feed.round_inputs(round_.first, round_.length))
        pending.append((round_.first, loss))
        if round_.level is not None and wait_after_averaging:
          jax.block_until_ready(state)

        done = round_.end
        checkpoint_now = bool(stop) or done == num_steps or (
            checkpoint_every and done % checkpoint_every == 0)
        # Checkpoints get a row too, so a resumed run's rows are the rows
        # an uninterrupted run writes.
        log_now = (done % config.train.log_every == 0 or done == num_steps or
                   checkpoint_now)
        eval_now = done == num_steps or (
            config.train.eval_every and done % config.train.eval_every == 0)
        if not (log_now or eval_now):
          continue
        # Each host holds its own learners' losses; every host needs all of
        # them to agree on the metrics and on divergence.
        losses = [(first + 1 + i, step_loss.reshape(-1))
                  for first, round_loss in pending
                  for i, step_loss in enumerate(
                      multihost_utils.process_allgather(round_loss,
                                                        tiled=True))]
        pending.clear()
        _check_finite(losses)
        segment_time = time.perf_counter() - segment_start
        train_time += segment_time
        train_images_seen += images_per_step * len(losses)
        rate = images_per_step * len(losses) / max(segment_time, 1e-9)
        last_loss = float(np.mean([l.mean() for _, l in losses]))
        row = dict(step=done, epoch=epoch(done), train_loss=last_loss,
                   learning_rate=float(lr_schedule(done - 1)),
                   images_per_s=rate, **counters(done))
        eta = (num_steps - done) * train_time / (done - first_step)
        logging.info('step %d/%d  epoch %.2f  loss %.4f  %.0f images/s  '
                     'ETA %.0fs', done, num_steps, epoch(done), last_loss,
                     rate, eta)
        if eval_now:
          params, batch_stats = engine.global_average(state)
          if hier.batch_stats == 'recompute':
            batch_stats = feed.recompute_batch_stats(
                params, batch_stats, hier.recompute_batches,
                config.data.batch_size)
          last_eval = feed.evaluate(params, batch_stats,
                                    config.train.eval_batch_size)
          if done == num_steps:
            export.save_model(workdir, params, batch_stats)
          row.update(last_eval)
          logging.info('step %d  test accuracy %.4f  test loss %.4f', done,
                       last_eval['test_accuracy'], last_eval['test_loss'])
        writer.write(**row, wall_s=time.perf_counter() - start)
        # A checkpoint never claims steps whose outputs are not written yet:
        # it follows the row, and the last one follows the summary.
        if checkpoint_now and done < num_steps:
          save_checkpoint(state, done)
        if stop and done < num_steps:
          checkpoints.wait()
          raise Preempted(
              f'stopped by {stop.signal_name} at step {done}/{num_steps}; '
              f'checkpoint saved in {checkpoints.directory}. Rerun the same '
              'command to resume.')
        # Evaluation, logging and checkpointing do not count as training.
        segment_start = time.perf_counter()

    summary = {
        **last_eval,
        'final_train_loss': last_loss,
        'images_per_s': train_images_seen / max(train_time, 1e-9),
        'steps': num_steps,
        'epochs': epoch(num_steps),
        'resumed_from_step': first_step,
        'wall_s': time.perf_counter() - start,
        **counters(num_steps),
        'topology': topology.describe(),
        'config': config.to_dict(),
    }
    writer.write_summary(summary)
    save_checkpoint(state, num_steps)
  except BaseException:
    # Report the first error: after a peer process dies, the checkpoint
    # barriers fail too, and their timeout must not replace the real cause.
    try:
      checkpoints.wait()
      checkpoints.close()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('hier_avg: closing the checkpoints failed too: %s', e)
    writer.close()
    raise
  checkpoints.wait()
  checkpoints.close()
  writer.close()
  return summary
