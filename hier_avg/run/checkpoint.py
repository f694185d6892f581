"""Checkpoints of every learner's state, with orbax, and safe resumption.

A checkpoint holds the whole `TrainState` (each learner's parameters,
BatchNorm statistics, optimizer state and RNG key, and the step, which fixes
the schedule's position) plus a JSON record: the step, the config's
fingerprint (`config_keys.fingerprint`) and the lr schedules' horizons (the
local one's, and the outer cosine's in outer steps).
Saving is asynchronous (training continues while the arrays are written)
and atomic (orbax writes into a temporary folder and renames it when
complete, so a half-written checkpoint is never picked up).
"""

import hashlib
import os
import shutil

from absl import logging
import jax
import orbax.checkpoint as ocp

from hier_avg.core.state import TrainState
from hier_avg.data import feeds
from hier_avg.errors import UserError
from hier_avg.run import distributed

CHECKPOINT_DIR = 'checkpoints'
# A damaged checkpoint's folder, renamed: no run reads it again.
UNREADABLE = '.unreadable'
# In the name of the folder orbax writes a checkpoint into before renaming
# it to its step, once complete.
TMP_MARKER = '.orbax-checkpoint-tmp'


def saved_steps(directory: str) -> list[int]:
  """The steps whose checkpoint folders `directory` holds (readable or
  not), before any manager is opened there."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory)
                if name.isdigit() and
                os.path.isdir(os.path.join(directory, name)))


def check_fingerprint(saved: dict, current: dict, directory: str) -> None:
  """Refuses to resume when a key that changes the computation differs."""
  for key in sorted(set(saved) | set(current)):
    if saved.get(key) != current.get(key):
      raise UserError(
          f'the checkpoint in {directory} was made with {key}='
          f'{saved.get(key)!r}, this run has {key}={current.get(key)!r}; '
          'resuming would not continue the same run: use the original '
          'value, or a new --workdir.')


def check_horizon(saved: int | None, current: int | None, explicit: bool,
                  directory: str) -> None:
  """Refuses a resumption that would silently bend the lr schedule.

  A cosine schedule decays over the run's length unless `opt.horizon_steps`
  fixes it. Resuming with another length (`train.steps`, `train.epochs`)
  would move the curve under the steps already run: the lr would jump at
  the resumed step. An explicit `opt.horizon_steps` says what the user
  wants, and is followed.
  """
  if explicit or saved is None or saved == current:
    return
  raise UserError(
      f'the run in {directory} decays its cosine learning rate over {saved} '
      f'steps; this run is {current} steps long, which would move that curve '
      'under the steps already run (the lr would jump). Keep the curve with '
      f'--config.opt.horizon_steps={saved} (then the lr stays at 0 after step '
      f'{saved}), set another opt.horizon_steps on purpose, or use a new '
      '--workdir.')


def check_outer_horizon(saved: int | None, current: int | None,
                        directory: str) -> None:
  """Refuses a resumption that would bend the outer lr's cosine, which
  spans the run's outer steps: another length moves it."""
  if saved is None or saved == current:
    return
  raise UserError(
      f'the run in {directory} decays its outer lr '
      f"(hier.outer_lr_schedule='cosine') over {saved} outer steps; this "
      f'run has {current}, which would move that curve under the outer '
      'steps already taken. Resume with the original length (train.steps, '
      'train.epochs), or use a new --workdir.')


def check_data(saved: dict | None, current: dict, directory: str,
               data_path: str) -> None:
  """Refuses to resume onto another training set (`feeds.identity`): its
  epochs, milestones and batches would not be the run's."""
  if saved is None or saved == current:
    return  # None: a checkpoint from before data sets were recorded.
  raise UserError(
      f'the checkpoint in {directory} was made on '
      f'{feeds.describe_identity(saved)}, but data.path={data_path!r} '
      f'holds {feeds.describe_identity(current)}; point data.path at the '
      "run's data set, or use a new --workdir.")


def _record_problem(record, step: int) -> str | None:
  """Why `record` cannot be a checkpoint's record of `step`, or None."""
  if not isinstance(record, dict):
    return f'its record is a {type(record).__name__}, not a JSON object'
  if record.get('step') != step:
    return f'its record names step {record.get("step")!r}'
  if not isinstance(record.get('fingerprint'), dict):
    return 'its record has no config fingerprint'
  return None


def _saveable(state: TrainState) -> TrainState:
  # Typed PRNG keys are stored as their raw uint32 data.
  return state.replace(rng=jax.random.key_data(state.rng))


def _abstract(state: TrainState):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      _saveable(state))


def state_layout(state: TrainState) -> str:
  """A short digest of the state's leaves (path, shape, dtype): what a
  checkpoint must match to restore into `state`. The learner grid fixes
  the shapes, not the devices, so resumable changes keep it."""
  leaves = jax.tree_util.tree_flatten_with_path(_saveable(state))[0]
  text = ';'.join(f'{jax.tree_util.keystr(path)}:{x.shape}:{x.dtype}'
                  for path, x in leaves)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _report_unreadable(directory: str, step: int, why: str) -> None:
  logging.warning('checkpoint %s/%d is unreadable (%s); trying an older '
                  'one.', directory, step, why)


def _first_line(error: Exception) -> str:
  # orbax raises many kinds of errors for damaged files.
  text = str(error).strip()
  return (f'{type(error).__name__}: '
          f'{text.splitlines()[0][:200] if text else ""}')


class Checkpoints:
  """`workdir/checkpoints/<step>/`: save, find and restore training states."""

  def __init__(self, workdir: str, keep: int):
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    self._manager = ocp.CheckpointManager(
        self.directory,
        # cleanup_tmp_directories: a save a kill cut short leaves a
        # temporary folder; the next run removes it.
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=True,
            cleanup_tmp_directories=True),
        item_names=('state', 'record'))

  def steps(self) -> list[int]:
    """Complete checkpoints, newest first."""
    return sorted(self._manager.all_steps(), reverse=True)

  def save(self, state: TrainState, record: dict) -> None:
    """Starts writing `state` in the background; returns at once.

    Raises the error of an earlier save that failed in the background (a
    full disk, say), so that a run never trains on past a checkpoint it
    believes it has.
    """
    self._manager.check_for_errors()
    step = int(record['step'])
    record = {**record, 'state_layout': state_layout(state)}
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_saveable(state)),
        record=ocp.args.JsonSave(record)), force=True)

  def restore(self, like: TrainState, check_record=lambda record: None
              ) -> tuple[TrainState, dict] | None:
    """The newest readable checkpoint, laid out like `like`; None if none.

    `check_record(record)` sees each checkpoint's record before its arrays
    are read and may refuse it (raising). A checkpoint that cannot be read
    (damaged arrays, a record that is not one) is reported and skipped for
    the next older one; once one is restored, the unreadable newer ones
    are moved aside (`move_aside`), never deleted, so that the run can save
    those steps again. If none can be read the run stops with an error and
    nothing is moved.
    """
    steps = self.steps()
    for i, step in enumerate(steps):
      try:
        record = self._manager.restore(step, args=ocp.args.Composite(
            record=ocp.args.JsonRestore()))['record']
      except Exception as e:  # pylint: disable=broad-except
        _report_unreadable(self.directory, step, _first_line(e))
        continue
      problem = _record_problem(record, step)
      if problem:
        _report_unreadable(self.directory, step, problem)
        continue
      check_record(record)
      layout = record.get('state_layout')
      if layout is not None and layout != state_layout(like):
        raise UserError(
            f'checkpoint {self.directory}/{step} holds a training state laid '
            'out differently from the one this version of hier_avg trains '
            'with this config; finish that run with the version that wrote '
            'it, or move the workdir away to start over.')
      try:
        state = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(like))))['state']
      except Exception as e:  # pylint: disable=broad-except
        _report_unreadable(self.directory, step, _first_line(e))
        continue
      if i:
        logging.warning('resuming from the older checkpoint at step %d.',
                        step)
        self.move_aside(steps[:i])
      return state.replace(rng=jax.random.wrap_key_data(state.rng)), record
    if steps:
      raise UserError(
          f'no checkpoint in {self.directory} can be read (steps '
          f'{", ".join(map(str, steps))}: damaged, or written by an older '
          'version of hier_avg with another state layout); move the folder '
          'away to start over, restore it from a backup, or finish the run '
          'with the version that wrote it.')
    return None

  def move_aside(self, steps) -> None:
    """Renames the checkpoints of `steps` to `<step>.unreadable` (or
    `.unreadable-2`, ...), which no run reads, saying so in one line each.

    Process 0 renames, once every process has restored (they read the
    same folder).
    """
    distributed.barrier('hier_avg: checkpoint restored')
    if distributed.is_main_process():
      for step in steps:
        path = os.path.join(self.directory, str(step))
        target, n = path + UNREADABLE, 1
        while os.path.exists(target):
          n += 1
          target = f'{path}{UNREADABLE}-{n}'
        os.rename(path, target)
        logging.warning('hier_avg: moved the unreadable checkpoint of step '
                        '%d to %s (kept for inspection; delete it when done)',
                        step, target)
    distributed.barrier('hier_avg: unreadable checkpoints moved')
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until every save in flight is on disk; raises if one
    failed."""
    self._manager.wait_until_finished()
    self._manager.check_for_errors()

  def remove_unfinished(self) -> None:
    """Removes the temporary folders of saves that did not complete (a
    failed write): the checkpoints already saved stay as they are."""
    if not distributed.is_main_process() or not os.path.isdir(
        self.directory):
      return
    for name in os.listdir(self.directory):
      if TMP_MARKER in name:
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> 'Checkpoints':
    return self

  def __exit__(self, error_type, error, traceback) -> None:
    """Waits for the saves in flight and closes, however the run ended.

    After a failure the first error is the one reported: when a peer
    process died, the checkpoint barriers fail too, and their timeout must
    not replace the real cause.
    """
    if error_type is None:
      self.wait()
      self.close()
      return
    try:
      self.wait()
      self.close()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('hier_avg: closing the checkpoints failed too: %s',
                      _first_line(e))
    self.remove_unfinished()
