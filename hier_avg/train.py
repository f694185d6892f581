"""`train_and_evaluate(config, workdir)`: the whole run, top to bottom.

Stages: check the config -> lay out learners on devices -> load data ->
build learner, algorithm (with its averaging periods over training) and
engine -> take the workdir (one run at a time) -> create the sharded
state, or resume it (and the periods' phases) from the newest checkpoint
-> train round by round, logging, evaluating the globally averaged model
and checkpointing as the cadence says -> write the summary, plots and
model.
Everything that can refuse the run happens before the workdir is touched.
"""

import contextlib
import math
import os

from absl import logging
import jax
import jax.numpy as jnp

from hier_avg import algorithms, builder, config_keys
from hier_avg.core import optim
from hier_avg.core import periods as periods_lib
from hier_avg.core.hierarchy import Hierarchy
from hier_avg.core.policies import AveragingPolicy
from hier_avg.data import feeds
from hier_avg.errors import require
from hier_avg.run import checkpoint, elastic, export, fault_injection
from hier_avg.run import preemption
from hier_avg.run import watchdog, workdirs
from hier_avg.run.cadence import Cadence
from hier_avg.run.metrics import METRICS_FILE, SUMMARY_FILE
from hier_avg.run.metrics import MetricsWriter, read_summary
from hier_avg.run.progress import LossWindow, Progress, TrainingDiverged
from hier_avg.run.progress import step_mean_losses
from hier_avg.runtime import compilation_cache, evaluation, memory
from hier_avg.tools import simulated_clock


# `final_train_loss` is the mean training loss over the last epoch's steps,
# at most this many (each checkpoint carries them).
FINAL_LOSS_STEPS = 1024


class Preempted(Exception):
  """SIGTERM/SIGINT stopped the run after saving a checkpoint."""


def total_steps(train_config, steps_per_epoch: int) -> int:
  if train_config.steps:
    return train_config.steps
  return max(1, math.ceil(train_config.epochs * steps_per_epoch))


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains with Hier-AVG as `config` says; returns the summary it writes.

  Rerunning the same command on the same workdir resumes from the newest
  checkpoint. Raises `Preempted` after SIGTERM/SIGINT (a checkpoint saved).
  """
  # ---- Check the config and lay out the learners -----------------------
  config_keys.validate(config)
  compilation_cache.configure(config.runtime.compilation_cache)
  topology = builder.build_topology(config)
  workdirs.check(workdir)

  # ---- Data, learner and engine (before the workdir is touched) ---------
  feed = feeds.load(config, topology.num_learners)
  config_keys.check_epochs(config, feed.steps_per_epoch)
  num_steps = total_steps(config.train, feed.steps_per_epoch)
  engine, lr_schedule = builder.build_engine(
      config, feed.data, topology, num_steps, feed.steps_per_epoch)
  # `hier.period_schedule`: the controller owns the phases; the loop tells
  # it each outermost averaging and keeps its state in every checkpoint.
  engine.algorithm, periods = algorithms.with_period_schedule(
      engine.algorithm, config.hier, feed.steps_per_epoch)
  _check_memory(config, engine, feed)
  logging.info('hier_avg: %s; %s', topology.describe(),
               engine.algorithm.description)

  # ---- Workdir (held by this run alone) and state, fresh or resumed -----
  with workdirs.held(workdir), checkpoint.Checkpoints(
      workdir, config.train.keep_checkpoints) as checkpoints:
    agreed = _what_a_resumption_keeps(config, num_steps, feed)
    state, record = _fresh_or_resumed(engine, checkpoints, config, agreed,
                                      feed.data.image_shape)
    if periods is not None:
      if record is not None:
        periods.restore(record['periods'])
      logging.info('hier_avg: averaging periods: %s%s',
                   periods_lib.describe_phases(
                       periods_lib.phases_before(periods.phases, num_steps)),
                   ' so far' if periods.needs_losses else '')
    first_step = int(state.step)
    require(first_step <= num_steps,
            f'the run in {workdir} already reached step {first_step}, past '
            f'this run\'s length of {num_steps} steps (train.steps, '
            f'train.epochs); ask for at least {first_step} steps, or use a '
            'new --workdir.')
    if first_step == num_steps:
      return _finished(workdir, num_steps)
    if first_step:
      logging.info('hier_avg: resuming at step %d from %s', first_step,
                   checkpoints.directory)
    feed.start(engine, first_step)
    survivors = (elastic.Elastic(config, engine, feed, num_steps,
                                 feed.steps_per_epoch, first_step)
                 if config.run.elastic and jax.process_count() > 1 else None)

    # ---- Train, log, evaluate and checkpoint; then the summary ----------
    cadence = Cadence.from_config(config.train, num_steps,
                                  engine.schedule.shortest_period)
    if snapped := cadence.snapped_from(config.train):
      logging.info('hier_avg: %s, so that rounds end only at averagings '
                   '(every %d steps; each other round length is one more '
                   'compiled program).', ', '.join(snapped),
                   engine.schedule.shortest_period)
    with MetricsWriter(workdir, keep_until_step=first_step) as writer:
      final_loss = LossWindow(
          min(math.ceil(feed.steps_per_epoch), FINAL_LOSS_STEPS),
          (record or {}).get('final_loss', ()))
      loop = _Loop(config, workdir, engine, feed, checkpoints, writer,
                   lr_schedule, cadence, agreed, periods, final_loss,
                   survivors)
      return loop.run(state)


def _check_memory(config, engine, feed) -> None:
  """Refuses what would exhaust memory only once allocated: the state of
  every learner, and the images that recompute BatchNorm statistics."""
  memory.check_state_fits(
      engine.state_bytes_per_device(feed.data.image_shape),
      engine.topology.mesh.local_devices)
  if AveragingPolicy.from_config(config.hier).recomputes_batch_stats:
    evaluation.check_recompute(engine, config.hier.recompute_batches,
                               config.data.batch_size,
                               feed.recompute_examples)


def _finished(workdir: str, num_steps: int) -> dict:
  """The summary of the run that already finished in `workdir`."""
  summary = read_summary(workdir)
  if summary:
    logging.info('hier_avg: the run in %s already finished its %d steps; '
                 'its summary is %s.', workdir, num_steps,
                 os.path.join(workdir, SUMMARY_FILE))
  else:
    logging.warning('hier_avg: the run in %s already finished its %d steps, '
                    'but its %s is gone; its rows are in %s and its model '
                    'in %s.', workdir, num_steps, SUMMARY_FILE,
                    METRICS_FILE, export.MODEL_FILE)
  return summary


def _what_a_resumption_keeps(config, num_steps: int, feed) -> dict:
  """What each checkpoint records and a resumed run must agree with."""
  cosine = config.hier.outer_lr_schedule == 'cosine'
  outer_horizon = (algorithms.outer_steps(config.hier, num_steps,
                                          feed.steps_per_epoch)
                   if cosine else None)
  return {'fingerprint': config_keys.fingerprint(config),
          'data': feeds.identity(feed),
          'lr_horizon': optim.horizon(config.opt, num_steps),
          'outer_horizon': outer_horizon}


def _fresh_or_resumed(engine, checkpoints, config, agreed, image_shape):
  """A fresh state, or the newest checkpoint's when the config matches;
  and that checkpoint's record (None: fresh)."""
  state = engine.init_state(config.seed, image_shape)

  def check(record):
    checkpoint.check_fingerprint(record['fingerprint'],
                                 agreed['fingerprint'], checkpoints.directory)
    checkpoint.check_data(record.get('data'), agreed['data'],
                          checkpoints.directory, config.data.path)
    checkpoint.check_horizon(record.get('lr_horizon'), agreed['lr_horizon'],
                             bool(config.opt.horizon_steps),
                             checkpoints.directory)
    checkpoint.check_outer_horizon(record.get('outer_horizon'),
                                   agreed['outer_horizon'],
                                   checkpoints.directory)

  restored = checkpoints.restore(engine.portable(state), check)
  if restored is None:
    return state, None
  return engine.from_portable(restored[0]), restored[1]


class _Loop:
  """The rounds of one run, and what the host does between them."""

  def __init__(self, config, workdir, engine, feed, checkpoints, writer,
               lr_schedule, cadence: Cadence, agreed: dict,
               periods: periods_lib.PeriodController | None,
               final_loss: LossWindow, survivors: elastic.Elastic | None):
    self.config, self.workdir = config, workdir
    self.engine, self.feed = engine, feed
    self.checkpoints, self.writer = checkpoints, writer
    self.lr_schedule, self.cadence = lr_schedule, cadence
    self.num_steps = cadence.num_steps
    self.policy = AveragingPolicy.from_config(config.hier)
    self.agreed = agreed  # Saved with every checkpoint.
    self.last_eval = {}
    self.periods = periods
    self.final_loss = final_loss  # Carried by every checkpoint.
    # The rounds' losses since the last outermost averaging, for `periods`.
    self._period_losses = []
    self._clock = None  # The simulated clock of every step, from `run`.
    self.survivors = survivors  # An elastic run's live processes.

  def epoch(self, step: int) -> float:
    """Examples seen / N: a pass over the shards may leave some out."""
    return step * self.feed.examples_per_step / self.feed.num_examples

  def run(self, state) -> dict:
    """Trains from `state` to the end; returns the summary it writes."""
    engine, feed, num_steps = self.engine, self.feed, self.num_steps
    first_step = int(state.step)
    channels = engine.communication(state)
    self._clock = simulated_clock.from_config(
        self.config.faults, engine, num_steps, sum(
            x.nbytes for x in jax.tree.leaves(state.params)) //
        engine.topology.num_learners)
    rows = self.writer.rows
    membership = engine.algorithm.membership
    progress = Progress(
        feed.examples_per_step, self.final_loss,
        wall_s_before=rows[-1]['wall_s'] if rows else 0.0,
        up_at=None if membership is None else
        lambda step: membership.takes(step - 1, 1)[0])
    cut_every = self.cadence.cut_every + tuple(
        engine.schedule.fit_cap(cap)
        for cap in (engine.max_round_length, feed.max_round_length))
    guards = (watchdog.from_config(self.config.run),
              fault_injection.from_environment())
    if self.survivors is not None and guards[0] is not None:
      self.survivors.on_change = guards[0].again
    with preemption.stop_on_signals() as stop:
      for round_ in engine.schedule.rounds(first_step, num_steps, cut_every):
        state, outputs, stopping = self._take_round(state, round_, stop,
                                                    progress, *guards)
        progress.add(round_.first, outputs, round_.level)
        self._tell_periods(round_, outputs)
        done = round_.end
        due = self.cadence.due(done, stopping=stopping)
        if not (due.log or due.evaluate):
          continue
        if self.survivors is not None:  # The row gathers from everyone.
          state = self.survivors.check(state, progress.held, done)
          self.engine = self.survivors.engine
        self._write_row(state, done, due.evaluate, progress, channels,
                        first_step)
        # A checkpoint never claims steps whose outputs are not written
        # yet: it follows the row, and the last one follows the summary.
        if due.checkpoint and done < num_steps:
          self._save(state, done)
        if stopping and done < num_steps:
          self.checkpoints.wait()
          raise Preempted(
              f'stopped by {stop.signal_name} at step {done}/{num_steps}; '
              f'checkpoint saved in {self.checkpoints.directory}. Rerun '
              'the same command to resume.')
        progress.resume_timing()
    summary = self._summary(progress, first_step, cut_every, channels)
    self.writer.write_summary(summary)
    self._save(state, num_steps)
    logging.info('hier_avg: done; summary.json, metrics.jsonl, plots and '
                 'the final model are in %s', self.workdir)
    return summary

  def _summary(self, progress, first_step: int, cut_every,
               channels) -> dict:
    """What `summary.json` says of the finished run."""
    engine, num_steps = self.engine, self.num_steps
    membership = engine.algorithm.membership
    return {
        **self.last_eval,
        'final_train_loss': self.final_loss.mean,
        'final_train_loss_steps': self.final_loss.steps,
        'images_per_s': progress.images_per_s,
        'steps': num_steps,
        'epochs': self.epoch(num_steps),
        'resumed_from_step': first_step,
        # The whole run's, resumed or not (this process compiled only
        # those of the rounds it ran).
        'compiled_round_programs': len(engine.programs_of(
            engine.schedule.rounds(0, num_steps, cut_every),
            self.feed.streamed)),
        **_levels(self.config.hier, engine.schedule, num_steps),
        'wall_s': progress.wall_s,
        **engine.counters(channels, num_steps),
        **self._clock_at(num_steps),
        **({} if membership is None else {'outages': [
            [o.learner, o.first, o.last] for o in membership.outages]}),
        **self._membership_at(num_steps),
        **({} if self.survivors is None else {'membership_changes': [
            c.as_dict() for c in self.survivors.changes]}),
        'topology': engine.topology.describe(),
        'config': self.config.to_dict(),
    }

  def _take_round(self, state, round_, stop, progress, watch, fault):
    """`round_` from `state`: (the state, its outputs, whether to stop),
    timed by the multi-process watchdog and with a test's fault; an
    elastic run's over its live processes."""
    # The calls a run makes (`--verbosity=1`): a resumed run makes the
    # uninterrupted run's from its checkpoint on (README, resuming).
    logging.debug('hier_avg: round of steps %d+%d', round_.first,
                  round_.length)
    if fault:
      fault.before(round_)
    kind = (round_.length, round_.level and round_.level.name,
            self.engine.topology.num_learners)
    with (contextlib.nullcontext() if watch is None else watch.watching(
        kind, f'the round of steps {round_.first + 1}..{round_.end}')):
      inputs = self.feed.round_inputs(round_.first, round_.length)
      if self.survivors is None:
        state, outputs = self.engine.run_round(state, round_, inputs,
                                               self.feed.streamed)
        # The stop request's all-gather (several processes) waits for the
        # round to finish.
        stopping = stop.agreed()
      else:
        state, outputs, stopping = self.survivors.run_round(
            state, round_, inputs, progress.held, stop)
        self.engine = self.survivors.engine
    if fault:
      fault.after(round_)
    return state, outputs, stopping

  def _write_row(self, state, done: int, evaluate: bool, progress,
                 channels, first_step: int) -> None:
    """The metrics row of step `done`, with an evaluation if asked."""
    loss, rate, measures = progress.collect()
    row = dict(step=done, epoch=self.epoch(done), train_loss=loss,
               learning_rate=float(self.lr_schedule(done - 1)),
               images_per_s=rate, **measures,
               **self.engine.counters(channels, done),
               **self._clock_at(done), **self._membership_at(done))
    eta = (self.num_steps - done) * progress.train_s / (done - first_step)
    logging.info('step %d/%d  epoch %.2f  loss %.4f  %.0f images/s  '
                 'ETA %.0fs', done, self.num_steps, self.epoch(done),
                 loss, rate, eta)
    if evaluate:
      params, batch_stats = evaluation.averaged_model(
          self.engine, self.feed, state, self.policy,
          self.config.data.batch_size)
      self.last_eval = self.feed.evaluate(
          params, batch_stats, self.config.train.eval_batch_size)
      if done == self.num_steps:
        export.save_model(self.workdir, params, batch_stats)
      row.update(self.last_eval)
      logging.info('step %d  test accuracy %.4f  test loss %.4f', done,
                   self.last_eval['test_accuracy'],
                   self.last_eval['test_loss'])
    self.writer.write(**row, wall_s=progress.wall_s)

  def _membership_at(self, step: int) -> dict:
    """An elastic run's learners live after `step` and the learner-steps
    its lost processes did not take; {} for any other run."""
    if self.survivors is None:
      return {}
    return {'live_learners': self.survivors.live_learners,
            'lost_learner_steps': self.survivors.lost_steps(step)}

  def _clock_at(self, step: int) -> dict:
    """The simulated clock after `step` (`tools/simulated_clock.py`); {}
    where nothing is simulated."""
    return {} if self._clock is None else self._clock[step - 1]

  def _tell_periods(self, round_, outputs) -> None:
    """Tells the period controller each outermost averaging, so that it
    may start a phase before the next round is planned (`Schedule.rounds`
    plans one round at a time)."""
    periods = self.periods
    if periods is None:
      return
    # The warmup's steps (rounds of one step) belong to no phase.
    if periods.needs_losses and round_.end > self.engine.schedule.sync_warmup:
      self._period_losses.append((round_.first, outputs['loss']))
    if not self.engine.schedule.ends_outermost_period(round_):
      return
    # Adaptive periods wait here for the round's losses: one host sync
    # per outermost averaging.
    self._hand_losses_to_periods()
    before = periods.phases[-1]
    periods.after_outermost(round_.end)
    if periods.phases[-1] != before and round_.end < self.num_steps:
      logging.info('hier_avg: from step %d every averaging period x%d',
                   round_.end, periods.phases[-1].multiplier)

  def _hand_losses_to_periods(self) -> None:
    # Gathered from every process (`step_mean_losses`): all processes
    # see the same losses and take the same decision.
    if self._period_losses:
      self.periods.add_losses(step_mean_losses(self._period_losses))
      self._period_losses.clear()

  def _save(self, state, step: int) -> None:
    if self.survivors is not None and self.survivors.changes:
      # A checkpoint holds every learner, and the lost ones are gone with
      # their processes (README, "When a host fails").
      logging.log_first_n(logging.WARNING, 'hier_avg: no more checkpoints '
                          'in this run: learners are lost.', 1)
      return
    # Never keep a diverged state: the last good checkpoint must stay good.
    if not bool(_all_finite(state.params)):
      raise TrainingDiverged(
          f'training diverged: non-finite parameters after step {step}; '
          'lower opt.lr or add opt.warmup_epochs.')
    record = {'step': step, **self.agreed,
              'final_loss': self.final_loss.record()}
    if self.periods is not None:
      self._hand_losses_to_periods()
      record['periods'] = self.periods.record()
    self.checkpoints.save(self.engine.portable(state), record)


def _levels(hier_config, schedule, num_steps: int) -> dict:
  """The effective hierarchy, (group size, period) per level, for the
  summary (whichever keys spelled it), and the phases of its periods,
  (start step, multiplier) each."""
  if hier_config.algorithm != 'hier':
    return {}
  hierarchy = Hierarchy.from_config(hier_config)
  return {'levels': [list(level) for level in zip(hierarchy.group_sizes,
                                                  hierarchy.periods)],
          'period_phases': [[p.start, p.multiplier] for p in
                            periods_lib.phases_before(schedule.phases,
                                                      num_steps)]}


@jax.jit
def _all_finite(params):
  return jnp.all(jnp.stack([jnp.isfinite(x).all()
                            for x in jax.tree.leaves(params)]))
