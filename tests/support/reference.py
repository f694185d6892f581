"""The oracle: Hier-AVG as a plain Python loop over learners.

No mesh, no blocks, no shard_map, no fused buffers: every learner steps on its
own with the same per-learner math (`Learner.step`), and averaging is an
explicit float64 mean over each group's list of learners. The engine must
match it.
"""

from collections.abc import Callable
import dataclasses
import math

import jax
import ml_dtypes
import numpy as np

from hier_avg.core.learner import Learner, step_key


@dataclasses.dataclass(frozen=True)
class RefLevel:
  groups: tuple[tuple[int, ...], ...]  # Learner indices averaged together.
  period: int


def nested_levels(num_learners, pairs):
  """Levels of (group size, period) pairs, innermost first: level i's
  groups are runs of S_i consecutive learners (grid ids are row-major)."""
  return [RefLevel(tuple(tuple(range(g, g + size))
                         for g in range(0, num_learners, size)), period)
          for size, period in pairs]


def hier_levels(num_learners, group_size, k1, k2):
  """Hier-AVG's local and global levels, learners numbered node-major."""
  return nested_levels(num_learners,
                       ((group_size, k1), (num_learners, k1 * k2)))


def kavg_levels(num_learners, k):
  return nested_levels(num_learners, ((num_learners, k),))


def per_learner(state_tree, grid_ndim, num_learners):
  """Engine arrays [grid..., x] -> list over learners of numpy trees."""
  def flatten(x):
    x = x.reshape((-1,) + x.shape[grid_ndim:])
    # Typed PRNG keys have no numpy form; they stay (host-side) jax arrays.
    is_key = jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
    if is_key:
      return jax.device_put(x, jax.devices('cpu')[0])
    return np.asarray(x)
  flat = jax.tree.map(flatten, state_tree)
  return [jax.tree.map(lambda x, i=i: x[i], flat) for i in range(num_learners)]


def _group_mean(trees, group, weights=None):
  """The float64 mean of `trees[i]` over `group`, each weighted by
  `weights[i]` (None: equally)."""
  w = np.array([1.0 if weights is None else weights[i] for i in group])
  def mean(*leaves):
    if not np.issubdtype(np.asarray(leaves[0]).dtype, np.floating):
      return leaves[0]
    stacked = np.stack([np.asarray(x, np.float64) for x in leaves])
    return (np.tensordot(w, stacked, axes=1) / w.sum()).astype(
        np.asarray(leaves[0]).dtype)
  return jax.tree.map(mean, *[trees[i] for i in group])


def outer_lr_at(lr, warmup=0, schedule='constant', outer_steps=None,
                final=0.0):
  """The outer lr of outer step n (1-based), written out: step n of a
  warmup of W uses lr * n / W; then 'constant' keeps lr, and 'cosine' goes
  from lr at step W + 1 towards `final` over the N - W steps after the
  warmup (N: `outer_steps`), as final + (lr - final) * (1 + cos(pi * t /
  (N - W))) / 2 with t = n - 1 - W."""
  def at(n):
    if n <= warmup:
      return lr * n / warmup
    if schedule == 'constant':
      return lr
    t, span = n - 1 - warmup, outer_steps - warmup
    return final + (lr - final) * 0.5 * (1 + math.cos(math.pi * t / span))
  return at


@dataclasses.dataclass
class RefOuterSGD:
  """SlowMo-style outer SGD, written out: one anchor and momentum buffer.

  `lr_at`: the lr of outer step n (1-based), replacing `lr`, as
  `outer_lr_at` gives; `lrs` gets the lr of each step taken.
  """
  lr: float
  momentum: float
  nesterov: bool
  anchor: dict
  buffer: dict = None
  lr_at: Callable[[int], float] | None = None
  lrs: list = dataclasses.field(default_factory=list)

  def step(self, average):
    """New global model from the global average (float64 numpy)."""
    lr = self.lr if self.lr_at is None else self.lr_at(len(self.lrs) + 1)
    self.lrs.append(lr)
    f64 = lambda t: jax.tree.map(lambda x: np.asarray(x, np.float64), t)
    avg, anchor = f64(average), f64(self.anchor)
    grad = jax.tree.map(lambda a, p: a - p, anchor, avg)
    if self.buffer is None:
      self.buffer = jax.tree.map(np.zeros_like, grad)
    self.buffer = jax.tree.map(lambda m, g: self.momentum * m + g,
                               self.buffer, grad)
    if self.nesterov:
      direction = jax.tree.map(lambda g, m: g + self.momentum * m, grad,
                               self.buffer)
    else:
      direction = self.buffer
    new = jax.tree.map(lambda a, d: a - lr * d, anchor, direction)
    self.anchor = jax.tree.map(lambda x, like: x.astype(np.asarray(like).dtype),
                               new, average)
    return self.anchor


def _squared_distance(a, b):
  return sum(float(np.sum((np.asarray(x, np.float64) -
                           np.asarray(y, np.float64)) ** 2))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# Blockwise kinds as the engine's (hier_avg/core/compression.py): values
# per scale, and the largest integer sent.
BLOCKS = {'int8': (256, 127), 'int4': (64, 7)}


def compress_values(x, kind):
  """What a float32 vector reads as after compression `kind`, written out:
  bfloat16 rounding, or one absmax scale per block of values and integers
  in [-q, q] (int8: 256 values a block, q = 127; int4: 64, q = 7)."""
  x = np.asarray(x, np.float32)
  if kind == 'bfloat16':
    return x.astype(ml_dtypes.bfloat16).astype(np.float32)
  size, top = BLOCKS[kind]
  out = np.empty_like(x)
  for start in range(0, x.size, size):
    block = x[start:start + size]
    scale = np.float32(np.abs(block).max()) / np.float32(top)
    if scale == 0:
      out[start:start + size] = 0
      continue
    q = np.clip(np.round(block / scale), -top, top)
    out[start:start + size] = q.astype(np.float32) * scale
  return out


def _average_parts(learners, level, parts, reset_opt_state, members=None,
                   weights=None):
  """Each group of `level` (its `members`: {group: the learners that
  average}, default all) takes its mean of `parts` (weighted by
  `weights`, per learner; None: equally); then, with `reset_opt_state`,
  the optimizer's floating state is zeroed."""
  members = members or {group: group for group in level.groups}
  for who in filter(None, members.values()):
    for part in parts:
      mean = _group_mean([l[part] for l in learners], who, weights)
      for i in who:
        learners[i][part] = mean
    if reset_opt_state:
      for i in who:
        learners[i]['opt_state'] = _zero_floats(learners[i]['opt_state'])


def _zero_floats(tree):
  return jax.tree.map(
      lambda x: np.zeros_like(x) if np.issubdtype(np.asarray(x).dtype,
                                                  np.floating) else x, tree)


def _warmup_step(learner, learners, images, labels, sampler, t):
  """Step t of the synchronous warmup, written out: post-local SGD's
  synchronous SGD. Every learner's gradient at its (common) model, the
  float64 mean of them applied by every learner's own optimizer (so the
  optimizer states stay equal too). Returns the step's losses; the
  averaging after it is `RefExchange.after_warmup_step`."""
  grad_fn = jax.jit(learner.loss_and_grads)
  apply_fn = jax.jit(learner.apply_gradients)
  indices = sampler.indices(t)
  row, grads = [], []
  for p, l in enumerate(learners):
    loss, l['batch_stats'], g = grad_fn(
        l['params'], l['batch_stats'], step_key(l['rng'], t),
        images[indices[p]], labels[indices[p]])
    row.append(float(loss))
    grads.append(g)
  mean = _group_mean(grads, range(len(learners)))
  for l in learners:
    l['params'], l['opt_state'] = apply_fn(l['params'], l['opt_state'], mean)
  return row


def _learner_gradients(grad_fn, params, batch_stats, rngs, images, labels,
                       sampler, t):
  """Each learner's gradient and BatchNorm update at step t, at `params`."""
  indices = sampler.indices(t)
  grads, stats = [], []
  for p, rng in enumerate(rngs):
    _, new_stats, g = grad_fn(params, batch_stats, step_key(rng, t),
                              images[indices[p]], labels[indices[p]])
    grads.append(g)
    stats.append(new_stats)
  return grads, stats


def run_sync_sgd(learner: Learner, params, batch_stats, opt_state, rngs,
                 images, labels, sampler, steps: int):
  """Synchronous SGD: one model, gradients all-reduced over P learners.

  Learner p computes its gradient on its own minibatch with its own
  augmentation key; the mean gradient updates the single model. BatchNorm
  statistics are the mean of the learners' updated statistics.
  """
  grad_fn = jax.jit(learner.loss_and_grads)
  apply_fn = jax.jit(learner.apply_gradients)
  for t in range(steps):
    grads, stats = _learner_gradients(grad_fn, params, batch_stats, rngs,
                                      images, labels, sampler, t)
    mean_grads = _group_mean(grads, range(len(rngs)))
    batch_stats = _group_mean(stats, range(len(rngs)))
    params, opt_state = apply_fn(params, opt_state, mean_grads)
  return params, batch_stats


def run_asgd(learner: Learner, params, batch_stats, opt_state, rngs, images,
             labels, sampler, steps: int, staleness: int):
  """Simulated ASGD, written out: one shared model and a list of the past.

  At step t learner p's gradient is taken at the model of step t - tau
  (the initial model before step tau) with the shared BatchNorm statistics;
  the P gradients are applied one by one, in learner order. The shared
  statistics become the mean of the learners' updated statistics.
  """
  grad_fn = jax.jit(learner.loss_and_grads)
  apply_fn = jax.jit(learner.apply_gradients)
  history = [params] * staleness  # history[0]: the model of step t - tau.
  for t in range(steps):
    read = history[0] if staleness else params
    grads, stats = _learner_gradients(grad_fn, read, batch_stats, rngs,
                                      images, labels, sampler, t)
    if staleness:
      history = history[1:] + [params]
    for g in grads:
      params, opt_state = apply_fn(params, opt_state, g)
    batch_stats = _group_mean(stats, range(len(rngs)))
  return params, batch_stats, opt_state


class RefExchange:
  """Every level's averaging written out as events, leaf by leaf.

  Level i of period T, F fragments (`fragments[i]`: tuples of leaf
  indices in `jax.tree.leaves` order) and delay tau: fragment f's event
  applies after the steps `done` with (done - W) % T == floor(T (f + 1) /
  F) % T (W: `sync_warmup`); with `phases` ((start, m) pairs, the first
  at W), done counts from the start of the last phase that starts before
  it and every period is m T. Levels are looked at from the widest in, and
  a level with every fragment due hides those inside it. Events applying
  after one step apply innermost first.

  An event starts tau steps before it applies (0: on time), on the models
  then (the snapshot). Per group of level i: on time or late, the group's
  float64 mean of the fragment's leaves; for a compressed level (`compress`
  per level: 'none', 'bfloat16', 'int8', 'int4'), per inner group (level i
  - 1's groups, single learners at the innermost) its float32 mean's change
  since the level's anchor plus (`error_feedback`) its residual,
  compressed, the float32 mean of what those read as compressed again,
  added to the anchor. Its measures: the mean over learners of the
  squared distance of the fragment's leaves from the group's mean (the
  drift) and, at the outermost level of several, of their inner group's
  mean from it (the spread); on time, of the models before the step's
  events. When it applies, at the outermost level with an outer optimizer
  (`outer`, a `RefOuterSGD` over the whole model, or `outers`, one per
  fragment over a list of its leaves), that fragment's outer step on the
  mean gives the result; the event applies as the result (on time), the
  result plus the progress
  since the snapshot (late), or torchft's mix `(1 - alpha) result +
  alpha now` (`delay_mix` alpha per level); every compressed level at or
  inside level i restarts its anchor there; with the level's last
  fragment its other parts (`average` less the parameters) are averaged
  and, with `reset_opt_state`, the optimizer's floating state is zeroed.

  With outages (`outages`: (learner, first step, last step) each, that
  learner down for those steps inclusive), an event after step H averages
  over each group's learners up at H, if there are at least `min_members`
  (per level; default 1) of them, and only they take the result (the
  outer step is taken only if the group averaged). With `weighting`
  'samples' each member weighs as many as the steps it took since its
  group (of that level) last averaged, or since the start. With periods
  in time (`per_period` > 0) learner j computes only the first
  `steps_fit[j]` steps of each `per_period` (and still averages).

  The exchange carries anchors, residuals, outer states and events in
  flight from one `run_exchange` call to the next (a resumed run).
  """

  def __init__(self, learners, levels, average, sync_warmup=0, compress=(),
               error_feedback=(), delay=(), delay_mix=(), fragments=None,
               outers=None, outer=None, reset_opt_state=False,
               phases=None, outages=(), min_members=(), heal='nearest',
               weighting='uniform', per_period=0, steps_fit=()):
    depth = len(levels)
    leaves = len(jax.tree.leaves(learners[0]['params']))
    self.levels, self.average, self.warmup = levels, average, sync_warmup
    self.kinds = list(compress or ['none'] * depth)
    self.feedback = list(error_feedback or [False] * depth)
    self.taus = list(delay or [0] * depth)
    self.mixes = list(delay_mix or [None] * depth)
    self.parts = fragments or [(tuple(range(leaves)),)] * depth
    assert outer is None or outers is None
    self.outers = [outer] if outer is not None else outers
    # A whole-model outer optimizer steps on the parameters' tree.
    self.outer_tree = (jax.tree.structure(outer.anchor)
                       if outer is not None else None)
    self.reset = reset_opt_state
    self.phases = phases or [(sync_warmup, 1)]
    self.anchors = {i: [_leaves_f32(l['params']) for l in learners]
                    for i, kind in enumerate(self.kinds) if kind != 'none'}
    self.residuals = {i: [[np.zeros_like(x) for x in anchors[0]]
                          for _ in learners]
                      for i, anchors in self.anchors.items()}
    self.inflight = {}
    self.outages, self.heal = tuple(outages), heal
    self.minimum = list(min_members or [1] * depth)
    self.weighting = weighting
    self.per_period, self.steps_fit = per_period, steps_fit
    # Per level, the steps each learner took since its group averaged.
    self.since = [[0] * len(learners) for _ in levels]

  def takes(self, j, done) -> bool:
    """Whether learner j computes step `done`: up and, with periods in
    time, among the first `steps_fit[j]` of each `per_period` steps."""
    return self.up(j, done) and (
        not self.per_period or (done - 1) % self.per_period <
        self.steps_fit[j])

  def count_step(self, done):
    for per_level in self.since:
      for j in range(len(per_level)):
        per_level[j] += self.takes(j, done)

  def weights(self, i):
    return self.since[i] if self.weighting == 'samples' else None

  def restart_counts(self, i, who, group):
    """Level i's `group` averaged (its members up: `who`): the step counts
    of its learners restart at level i and inside it."""
    if who:
      for inner in range(i + 1):
        for j in group:
          self.since[inner][j] = 0

  def up(self, j, done) -> bool:
    """Whether learner j takes step `done` (1-based)."""
    return not any(o[0] == j and o[1] <= done <= o[2] for o in self.outages)

  def heal_returning(self, learners, done):
    """Learners up at step `done` and down at the one before take (heal
    'nearest') the float64 mean of the averaged parts over the learners
    of their innermost group up at both steps, or of the next level out
    where there is none; a reset optimizer state starts from zero."""
    if self.heal != 'nearest' or done == 1:
      return
    live = [self.up(j, done) and self.up(j, done - 1)
            for j in range(len(learners))]
    back = [j for j in range(len(learners))
            if self.up(j, done) and not self.up(j, done - 1)]
    for j in back:
      for level in self.levels:
        group = next(g for g in level.groups if j in g)
        who = [k for k in group if live[k]]
        if who:
          for part in self.average:
            learners[j][part] = _group_mean([l[part] for l in learners], who)
          break
      if self.reset:
        learners[j]['opt_state'] = _zero_floats(learners[j]['opt_state'])

  def members(self, group, i, done):
    """The learners of `group` of level i that average after step `done`:
    those up, if at least the level's minimum; () otherwise."""
    who = tuple(j for j in group if self.up(j, done))
    return who if len(who) >= self.minimum[i] else ()

  @property
  def top(self) -> int:
    return len(self.levels) - 1

  def due(self, done):
    """(level index, fragment) pairs applying after step `done`,
    innermost first."""
    if done <= self.warmup:
      return []
    start, m = [p for p in self.phases if p[0] < done][-1]
    pairs = []
    for i in reversed(range(len(self.levels))):
      period, count = self.levels[i].period * m, len(self.parts[i])
      fs = [f for f in range(count) if (done - start) % period ==
            (period * (f + 1) // count) % period]
      pairs += [(i, f) for f in reversed(fs)]
      if len(fs) == count:
        break
    return pairs[::-1]

  def after_step(self, learners, done, drift=None):
    """Applies the events due after step `done`, then starts the late
    events whose window opens there; `drift` gets the step's measures
    (`run`)."""
    applied = self.due(done)
    before = [jax.tree.map(np.copy, l['params']) for l in learners]
    measures = {}
    for i, f in applied:
      if self.taus[i]:
        record = self.inflight.pop((i, f))
      else:
        record = self._start(learners, i, f, before, done)
      measures[i, f] = record['measures']
      self._apply(learners, i, f, record)
      if f == len(self.parts[i]) - 1:
        _average_parts(learners, self.levels[i],
                       [p for p in self.average if p != 'params'],
                       self.reset, {g: self.members(g, i, done)
                                    for g in self.levels[i].groups},
                       self.weights(i))
      if self.outages:
        for group in self.levels[i].groups:
          self.restart_counts(i, self.members(group, i, done), group)
    if drift is not None and applied:
      widest = max(i for i, _ in applied)
      found = [measures[i, f] for i, f in applied if i == widest]
      drift.append((done, widest, sum(m[0] for m in found),
                    None if found[0][1] is None else
                    sum(m[1] for m in found)))
    self.start_late(learners, done)

  def after_warmup_step(self, learners, done, drift=None):
    """The outermost level's averaging after a synchronous step: models
    and optimizer states are equal already; the other averaged parts
    average (no reset: synchronous SGD keeps its momentum), each fragment
    takes its outer step, the anchors restart, the measures are zero."""
    _average_parts(learners, self.levels[-1],
                   [p for p in self.average if p not in ('params',
                                                         'opt_state')],
                   False)
    if self.outers is not None:
      new = list(jax.tree.leaves(learners[0]['params']))
      for f, mine in enumerate(self.parts[-1]):
        for k, value in zip(mine, self._outer_step(f, [new[k]
                                                        for k in mine])):
          new[k] = value
      model = jax.tree.unflatten(jax.tree.structure(learners[0]['params']),
                                 new)
      for l in learners:
        l['params'] = model
    for anchors in self.anchors.values():
      anchors[:] = [_leaves_f32(l['params']) for l in learners]
    if drift is not None:
      drift.append((done, self.top, 0.0,
                    0.0 if len(self.levels) > 1 else None))

  def start_late(self, learners, done):
    """Starts the late events whose window opens after step `done` (0:
    before the first step)."""
    for i, tau in enumerate(self.taus):
      if tau:
        for j, f in self.due(done + tau):
          if j == i:
            self.inflight[(i, f)] = self._start(learners, i, f)

  def _leaves(self, learners, i, f):
    return [[np.array(jax.tree.leaves(l['params'])[k])
             for k in self.parts[i][f]] for l in learners]

  def _start(self, learners, i, f, before=None, done=None):
    """The event's result per learner from the models as they are now
    (None for a learner that does not take it); its measures of `before`
    (default: now; None with outages)."""
    now = self._leaves(learners, i, f)
    measured = now if before is None else self._leaves(
        [{'params': p} for p in before], i, f)
    target, received, residuals = [None] * len(learners), {}, {}
    inner = (self.levels[i - 1].groups if i else
             tuple((j,) for j in range(len(learners))))
    for group in self.levels[i].groups:
      who = group if done is None else self.members(group, i, done)
      if self.kinds[i] == 'none':
        mean = [_group_mean([x[k] for x in now], who, self.weights(i))
                for k in range(len(now[0]))] if who else None
      else:
        mean = self._compressed(now, i, f, group, inner, residuals)
      for j in who:
        received[j], target[j] = mean, mean
    return {'target': target, 'snapshot': now, 'residuals': residuals,
            'measures': (self._measures(measured, received, i)
                         if not self.outages else None)}

  def _outer_step(self, f, mean):
    if self.outer_tree is None:
      return self.outers[f].step(mean)
    return jax.tree.leaves(self.outers[f].step(
        jax.tree.unflatten(self.outer_tree, mean)))

  def _measures(self, measured, received, i):
    """(drift, spread) of one event: mean over learners of squared
    distances from the mean they receive (spread: None unless level i is
    the outermost of several)."""
    count = len(measured)
    drift = sum(_squared_distance(measured[j], received[j])
                for j in range(count)) / count
    if i != self.top or i == 0:
      return drift, None
    spread = 0.0
    for group in self.levels[i - 1].groups:
      inner = [_group_mean([measured[j][k] for j in range(count)], group)
               for k in range(len(measured[0]))]
      spread += sum(_squared_distance(inner, received[j]) for j in group)
    return drift, spread / count

  def _compressed(self, now, i, f, group, inner, residuals):
    kind, read, leaves = self.kinds[i], [], self.parts[i][f]
    anchor = np.concatenate([self.anchors[i][group[0]][k].ravel()
                             for k in leaves])
    for members in [g for g in inner if g[0] in group]:
      mean = np.mean([np.concatenate([x.ravel().astype(np.float64)
                                      for x in now[j]]) for j in members],
                     0).astype(np.float32)
      change = mean - anchor
      if self.feedback[i]:
        change = change + np.concatenate(
            [self.residuals[i][members[0]][k].ravel()
             for k in leaves])
      values = compress_values(change, kind)
      for j in members:
        residuals[j] = change - values
      read.append(values.astype(np.float64))
    new = anchor + compress_values(np.mean(read, 0).astype(np.float32), kind)
    return _cut(new, now[group[0]])

  def _apply(self, learners, i, f, record):
    leaves = self.parts[i][f]
    tau, mix = self.taus[i], self.mixes[i]
    taking = [t for t in record['target'] if t is not None]
    if self.outers is not None and i == self.top and taking:  # One group.
      stepped = self._outer_step(f, taking[0])
      record = {**record, 'target': [None if t is None else stepped
                                     for t in record['target']]}
    for j, l in enumerate(learners):
      flat, treedef = jax.tree.flatten(l['params'])
      target = record['target'][j]
      if target is None:
        continue
      for n, k in enumerate(leaves):
        x = np.asarray(flat[k], np.float64)
        t = np.asarray(target[n], np.float64)
        if tau and mix is None:
          value = t + (x - np.asarray(record['snapshot'][j][n], np.float64))
        elif tau:
          value = (1 - mix) * t + mix * x
        else:
          value = t
        flat[k] = value.astype(np.asarray(flat[k]).dtype)
      l['params'] = jax.tree.unflatten(treedef, flat)
      for level, anchors in self.anchors.items():
        if level <= i:
          for n, k in enumerate(leaves):
            anchors[j][k] = np.asarray(target[n], np.float32)
      if record['residuals'] and self.feedback[i]:
        offsets = np.cumsum([0] + [self.residuals[i][j][k].size
                                   for k in leaves])
        for n, k in enumerate(leaves):
          self.residuals[i][j][k] = record['residuals'][j][
              offsets[n]:offsets[n + 1]].reshape(
                  self.residuals[i][j][k].shape)


def _leaves_f32(tree):
  return [np.asarray(x, np.float32) for x in jax.tree.leaves(tree)]


def _cut(vector, like):
  """`vector` cut into arrays shaped and typed as the list `like`."""
  out, start = [], 0
  for x in like:
    out.append(vector[start:start + x.size].reshape(x.shape).astype(
        x.dtype))
    start += x.size
  return out


def run(learner: Learner, learners: list[dict], levels, average, images,
        labels, sampler, steps: int, drift=None, **options):
  """Trains `learners` (dicts of params/batch_stats/opt_state/rng) in
  place for `steps` steps from the first, every averaging done by a
  `RefExchange(learners, levels, average, **options)`. Returns the
  per-step, per-learner losses; `drift` gets each step's averaging's
  (step, level index, drift, spread) (`RefExchange`; the widest level's
  events of the step, their sums)."""
  exchange = RefExchange(learners, levels, average, **options)
  return run_exchange(learner, learners, exchange, images, labels, sampler,
                      steps, drift=drift)


def run_exchange(learner: Learner, learners: list[dict],
                 exchange: RefExchange, images, labels, sampler, steps: int,
                 first_step: int = 0, drift=None):
  """`run` with a given exchange, which carries what the levels keep (and
  the events in flight) into a later call from `first_step`. Steps
  1..W (`sync_warmup`) are synchronous SGD (`_warmup_step`)."""
  step_fn = jax.jit(learner.step)
  losses = []
  if first_step == 0:
    exchange.start_late(learners, 0)
  for t in range(first_step, first_step + steps):
    done = t + 1
    if done <= exchange.warmup:
      losses.append(_warmup_step(learner, learners, images, labels,
                                 sampler, t))
      exchange.after_warmup_step(learners, done, drift)
      exchange.start_late(learners, done)
    else:
      indices = sampler.indices(t)
      exchange.heal_returning(learners, done)
      row = []
      for p, l in enumerate(learners):
        if not exchange.takes(p, done):  # No step: its loss reads 0.
          row.append(0.0)
          continue
        l['params'], l['batch_stats'], l['opt_state'], loss = step_fn(
            l['params'], l['batch_stats'], l['opt_state'],
            step_key(l['rng'], t), images[indices[p]], labels[indices[p]])
        row.append(float(loss))
      losses.append(row)
      exchange.count_step(done)
      exchange.after_step(learners, done, drift)
  return losses
