"""Which examples each learner trains on: a pure function of the step.

Indices depend only on `(seed, epoch, learner, step)`, so resuming needs no
iterator state and every learner draws its own reproducible stream.

  * 'partition': every epoch one global permutation of the training set is
    split into P disjoint shards, one per learner; a learner walks its shard
    in batches of B. Within an epoch no two learners see the same example.
  * 'iid': every learner draws B indices uniformly with replacement.

An epoch is `steps_per_epoch = (N // P) // B` local steps in both modes, so
all learners together see (about) the training set once per epoch.
"""

import functools

import numpy as np

from hier_avg.errors import require

SAMPLING_MODES = ('partition', 'iid')
# Separate random streams for the two modes, independent of model init.
_PARTITION_STREAM, _IID_STREAM = 101, 102


class Sampler:
  """Per-learner minibatch indices for any step, computed on the host."""

  def __init__(self, num_examples: int, num_learners: int, batch_size: int,
               mode: str, seed: int):
    shard = num_examples // num_learners
    require(batch_size <= shard,
            f'data.batch_size={batch_size} is larger than the '
            f'{shard} examples each of the {num_learners} learners gets from '
            f'{num_examples}; lower data.batch_size or hier.num_learners.')
    self.num_examples = num_examples
    self.num_learners = num_learners
    self.batch_size = batch_size
    self.mode = mode
    self.seed = seed
    self.shard_size = shard
    self.steps_per_epoch = shard // batch_size

  @functools.lru_cache(maxsize=2)
  def _permutation(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, _PARTITION_STREAM, epoch])
    return rng.permutation(self.num_examples).astype(np.int32)

  def indices(self, step: int, learners=None) -> np.ndarray:
    """int32 [P, B]: the examples of 0-based local step `step`, per learner.

    `learners` (ids in 0 .. P-1) selects rows: a host builds only its own.
    """
    learners = slice(None) if learners is None else np.asarray(learners)
    epoch, within = divmod(step, self.steps_per_epoch)
    if self.mode == 'iid':
      rng = np.random.default_rng([self.seed, _IID_STREAM, step])
      return rng.integers(0, self.num_examples,
                          (self.num_learners, self.batch_size),
                          np.int32)[learners]
    shards = self._permutation(epoch)[:self.num_learners * self.shard_size]
    shards = shards.reshape(self.num_learners, self.shard_size)[learners]
    start = within * self.batch_size
    return shards[:, start:start + self.batch_size]

  def round_indices(self, first: int, length: int,
                    learners=None) -> np.ndarray:
    """int32 [length, P, B]: the indices of steps `first .. first+length-1`."""
    if not length:  # A round of its averaging alone.
      count = self.num_learners if learners is None else len(learners)
      return np.zeros((0, count, self.batch_size), np.int32)
    return np.stack([self.indices(t, learners)
                     for t in range(first, first + length)])
