"""Where a run's minibatches and test set come from: resident or streamed.

`ResidentFeed`: a data set loaded whole into host memory (CIFAR, MNIST,
folders, synthetic). Where training reads it from is `data.placement`:
  * 'device': a copy on every device (`topology.put_replicated`); a round
    carries only example indices, and minibatches are gathered on device.
  * 'host': the set stays in host memory; each process gathers its own
    learners' minibatches of a round there (`topology.put_round_gathered`)
    and the round carries them, as a streamed round does.
  * 'auto' (the default): 'device' when the set (train images and labels)
    fits `data.device_memory_fraction` of each device's memory, else
    'host'. Fake CPU devices share the host's RAM, so there each device's
    memory is the host's physical memory over their count: 8 CPU devices
    holding a copy each cost 8 copies of host RAM.
Both give the learners the same uint8 minibatches, which they augment on
device with their own keys, so both placements compute the same run, to
float32 rounding (tested; their programs differ, so not to the bit).
Evaluation and `recompute_batch_stats` read the host copy batch by batch
under either placement: the test set is never placed whole.
`StreamedFeed`: a tfds data set read, decoded and augmented on each host
(ImageNet, `streaming.py`). A round carries its minibatches.

Both give the train loop the same things: `steps_per_epoch` (steps of one
pass over the learners' shards), `num_examples` and `examples_per_step`,
`start(engine, first_step)`, `round_inputs(first, length)` for
`Engine.train_round`, `streamed` (whether those inputs are minibatches),
`max_round_length`, `evaluate` and `recompute_batch_stats`.
"""

import itertools

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from hier_avg.data import datasets
from hier_avg.data import sampling
from hier_avg.data import streaming
from hier_avg.runtime import memory
from hier_avg.runtime.engine import Engine
from hier_avg.errors import require
from hier_avg.runtime.evaluation import (check_recompute, evaluate,
                                         evaluate_batches, global_eval_batch,
                                         recompute_batch_stats,
                                         recompute_calls,
                                         recompute_from_batches)


def is_streamed(data_config) -> bool:
  return data_config.name in streaming.STREAMED_NAMES


# A round's minibatches are gathered whole before its steps run: on the host
# for a streamed set or one kept in host memory, on each device for one
# placed there (indexing the data set inside a scanned loop made XLA:CPU
# copy it every step). Rounds are cut so that one process's (host) or one
# device's share stays under this: K1 = 2000 steps of 8 learners x 128
# CIFAR images per device would otherwise gather 6 GB.
MAX_ROUND_BYTES = 1 << 30

PLACEMENTS = ('auto', 'device', 'host')


def choose_placement(placement: str, data_bytes: int,
                     budget_bytes: float) -> str:
  """'device' or 'host' for `data.placement`; 'auto' by the budget."""
  if placement == 'auto':
    return 'device' if data_bytes <= budget_bytes else 'host'
  return placement


def steps_within_round_bytes(step_bytes: int) -> int:
  """Most steps per round whose minibatches stay under MAX_ROUND_BYTES."""
  return max(1, MAX_ROUND_BYTES // step_bytes)


def identity(feed) -> dict:
  """What identifies the feed's training set, for a checkpoint's record:
  a resumed run must train on the same one (`checkpoint.check_data`)."""
  return {'train_examples': int(feed.num_examples),
          'classes': int(feed.data.num_classes),
          'image_shape': [int(n) for n in feed.data.image_shape]}


def describe_identity(identity: dict) -> str:
  shape = 'x'.join(map(str, identity.get('image_shape', ())))
  return (f'{identity.get("train_examples")} training examples of '
          f'{identity.get("classes")} classes, images {shape}')


class ResidentFeed:
  """A data set in host memory, placed on every device or kept on the host.

  See the module docstring for `data.placement`.
  """

  def __init__(self, data: datasets.Dataset, data_config, num_learners: int,
               seed: int):
    self.data = data
    self._sampler = sampling.Sampler(
        len(data.train_images), num_learners, data_config.batch_size,
        data_config.sampling, seed)
    self.steps_per_epoch = self._sampler.steps_per_epoch
    self.num_examples = len(data.train_images)
    self.examples_per_step = num_learners * data_config.batch_size
    self._placement = data_config.placement
    self._memory_fraction = data_config.device_memory_fraction
    self._seed = seed
    self._engine = self._images = self._labels = None
    self.placement = None  # 'device' or 'host', once started.

  @property
  def streamed(self) -> bool:
    """Whether rounds carry minibatches (`Engine.train_round`)."""
    return self.placement == 'host'

  @property
  def recompute_examples(self) -> int:
    """Training images each process may recompute statistics from: all
    (every process holds the whole set)."""
    return self.num_examples

  def _choose_placement(self, engine: Engine) -> str:
    """Decides the placement once and logs it in one line.

    Every process must decide alike (they run the same programs): each
    budget is of its own devices, and the smallest over processes counts.
    """
    data_bytes = self.data.train_images.nbytes + self.data.train_labels.nbytes
    budget = self._memory_fraction * memory.device_memory_bytes(
        engine.topology.mesh.local_devices)
    if jax.process_count() > 1:
      budget = float(np.min(multihost_utils.process_allgather(
          np.float32(budget))))
    placement = choose_placement(self._placement, data_bytes, budget)
    logging.info(
        'hier_avg: training set %.1f MiB per device if replicated, budget '
        '%.1f MiB per device (data.device_memory_fraction=%g); placement '
        '%s (data.placement=%s)', data_bytes / 2**20, budget / 2**20,
        self._memory_fraction, placement, self._placement)
    return placement

  @property
  def max_round_length(self) -> int:
    """Most steps per round whose gathered minibatches fit: a process's,
    gathered on the host, or a device's, gathered on the device."""
    topology = self._engine.topology
    learners = (len(topology.process_learner_ids()) if self.streamed
                else topology.learners_per_device)
    return steps_within_round_bytes(learners * self._sampler.batch_size *
                                    self.data.train_images[0].nbytes)

  def start(self, engine: Engine, first_step: int) -> None:
    del first_step  # Indices are a pure function of the step.
    self.placement = self._choose_placement(engine)
    self.move_to(engine)

  def move_to(self, engine: Engine) -> None:
    """The same placement on `engine`'s devices (an elastic run's
    survivors, `run/elastic.py`)."""
    self._engine = engine
    if self.placement == 'device':
      self._images, self._labels = engine.topology.put_replicated(
          self.data.train_images, self.data.train_labels)

  def round_inputs(self, first: int, length: int) -> tuple:
    topology = self._engine.topology
    if self.streamed:
      return topology.put_round_gathered(
          self._sampler, first, length, self.data.train_images,
          self.data.train_labels)
    return (self._images, self._labels,
            topology.put_round_indices(self._sampler, first, length))

  def evaluate(self, params, batch_stats, batch_size: int) -> dict:
    return evaluate(self._engine, params, batch_stats, self.data.test_images,
                    self.data.test_labels, batch_size)

  def recompute_batch_stats(self, params, batch_stats, num_batches: int,
                            batch_size: int):
    return recompute_batch_stats(self._engine, params, batch_stats,
                                 self.data.train_images, num_batches,
                                 batch_size, self._seed)


class StreamedFeed:
  """Each host streams its learners' minibatches; rounds carry them."""
  streamed = True

  def __init__(self, data: streaming.StreamedDataset, data_config,
               num_learners: int, seed: int):
    # config_keys refuses data.sampling='iid' for streamed sets.
    self.data = data
    self.steps_per_epoch = streaming.steps_per_epoch(
        data, num_learners, data_config.batch_size)
    self.num_examples = data.num_train
    self.examples_per_step = num_learners * data_config.batch_size
    self._num_learners = num_learners
    self._batch_size = data_config.batch_size
    self._augment = data_config.augment
    self._seed = seed
    self._engine = self._batches = None
    self._next_step = 0

  @property
  def recompute_examples(self) -> int:
    """Training images each process may recompute statistics from: its
    share of the training files."""
    return self.data.num_train // jax.process_count()

  @property
  def max_round_length(self) -> int:
    """Most steps per round, so a process's round of images fits."""
    learners = len(self._engine.topology.process_learner_ids())
    step_bytes = (learners * self._batch_size
                  * int(np.prod(self.data.image_shape)))
    return steps_within_round_bytes(step_bytes)

  def start(self, engine: Engine, first_step: int) -> None:
    self._engine = engine
    self._next_step = first_step
    self._batches = streaming.train_batches(
        self.data, self._num_learners, self._batch_size,
        len(engine.topology.process_learner_ids()), first_step, self._seed,
        self._augment, jax.process_index(), jax.process_count())

  def round_inputs(self, first: int, length: int) -> tuple:
    # A stream is read in order: rounds must come one after another.
    assert first == self._next_step, (first, self._next_step)
    self._next_step += length
    images, labels = zip(*(next(self._batches) for _ in range(length)))
    return self._engine.topology.put_round_batches(np.stack(images),
                                                   np.stack(labels))

  def evaluate(self, params, batch_stats, batch_size: int) -> dict:
    global_batch = global_eval_batch(self._engine, batch_size,
                                     self.data.num_test)
    per_process = global_batch // jax.process_count()
    return evaluate_batches(
        self._engine, params, batch_stats,
        streaming.eval_batches(self.data, per_process, jax.process_index(),
                               jax.process_count()),
        global_batch, self.data.num_test)

  def recompute_batch_stats(self, params, batch_stats, num_batches: int,
                            batch_size: int):
    # The first batches of each process's shard of the training split, in
    # file order (tfds shuffled ImageNet when preparing it), unaugmented.
    engine = self._engine
    check_recompute(engine, num_batches, batch_size,
                    self.recompute_examples)
    calls = recompute_calls(engine, num_batches)
    local_devices = len(engine.topology.mesh.local_devices)
    batches = streaming.eval_batches(
        self.data, local_devices * batch_size, jax.process_index(),
        jax.process_count(), split=streaming.TRAIN_SPLIT)
    return recompute_from_batches(
        engine, params, batch_stats,
        (images.reshape((local_devices, batch_size) + images.shape[1:])
         for images, _, _ in itertools.islice(batches, calls)), calls)


def load(config, num_learners: int):
  """The feed of `config.data`: streamed for tfds ImageNet, else resident."""
  if is_streamed(config.data):
    data = streaming.load(config.data.name, config.data.path,
                          config.data.image_size, jax.process_count())
    feed = StreamedFeed(data, config.data, num_learners, config.seed)
  else:
    data = datasets.load(config.data, config.seed, jax.process_count())
    feed = ResidentFeed(data, config.data, num_learners, config.seed)
  _report_dropped(feed)
  return feed


# A pass that leaves out more than this share of the data is reported.
DROPPED_SHARE_REPORTED = 0.01


def _report_dropped(feed) -> None:
  """Says once when a pass over the shards leaves many examples out.

  Each learner's shard is N // P examples cut into whole batches of B, so a
  pass uses P * B * steps_per_epoch of the N; the rest (up to P * B - 1
  examples, and more under 'partition' rounding) is not seen that pass.
  """
  used = feed.examples_per_step * feed.steps_per_epoch
  dropped = feed.num_examples - used
  if dropped > DROPPED_SHARE_REPORTED * feed.num_examples:
    logging.warning(
        'hier_avg: each pass over the data uses %d of its %d examples (%d, '
        '%.1f%%, left out: batches are whole and shards equal); metrics '
        'count epochs as examples seen / %d. Fewer learners or a smaller '
        'data.batch_size leave out less.', used, feed.num_examples, dropped,
        100 * dropped / feed.num_examples, feed.num_examples)
