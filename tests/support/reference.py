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


def _group_mean(trees, group):
  def mean(*leaves):
    if not np.issubdtype(np.asarray(leaves[0]).dtype, np.floating):
      return leaves[0]
    stacked = np.stack([np.asarray(x, np.float64) for x in leaves])
    return stacked.mean(0).astype(np.asarray(leaves[0]).dtype)
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


def _drift(learners, levels, level, step):
  """One averaging's (step, level index, drift, spread), written out."""
  params = [l['params'] for l in learners]

  def mean_of(group):
    return jax.tree.map(lambda *xs: np.mean(
        [np.asarray(x, np.float64) for x in xs], 0), *[params[i]
                                                       for i in group])

  def group_of(groups, i):
    return next(g for g in groups if i in g)

  means = {g: mean_of(g) for g in level.groups}
  drift = np.mean([_squared_distance(p, means[group_of(level.groups, i)])
                   for i, p in enumerate(params)])
  spread = None
  if level is levels[-1] and len(levels) > 1:
    inner = {g: mean_of(g) for g in levels[-2].groups}
    spread = np.mean([_squared_distance(
        inner[group_of(levels[-2].groups, i)],
        means[group_of(level.groups, i)]) for i in range(len(params))])
  return step, levels.index(level), drift, spread


# Blockwise kinds as the engine's (hier_avg/core/compression.py): values
# per scale, and the largest integer sent.
BLOCKS = {'int8': (256, 127), 'int4': (64, 7)}


def _float_buffer(tree):
  """A tree's floating leaves side by side, in tree order, float32."""
  return np.concatenate([np.asarray(x, np.float32).ravel()
                         for x in jax.tree.leaves(tree)
                         if np.issubdtype(np.asarray(x).dtype, np.floating)])


def _unbuffer(buffer, like):
  """`_float_buffer`'s inverse: `buffer` cut into `like`'s float leaves."""
  leaves, treedef = jax.tree.flatten(like)
  out, start = [], 0
  for x in leaves:
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating):
      out.append(buffer[start:start + x.size].reshape(x.shape).astype(
          x.dtype))
      start += x.size
    else:
      out.append(x)
  return jax.tree.unflatten(treedef, out)


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


class RefCompression:
  """Compressed averaging per level, written out: each learner's anchor
  (its group's last common parameters) and error-feedback residual.

  A level's groups are made of the groups one level in (single learners
  at the innermost); each inner group's float32 mean change since the
  anchor (plus its residual) is compressed, the level takes the float32
  mean of what they read as, compresses that mean again, and every
  learner of the group becomes anchor + what that reads as.
  """

  def __init__(self, learners, kinds, feedback=None):
    self.kinds = list(kinds)
    self.feedback = list(feedback or [False] * len(kinds))
    self.anchors = [[_float_buffer(l['params']) for l in learners]
                    for _ in kinds]
    self.residuals = [[np.zeros_like(a) for a in anchors]
                      for anchors in self.anchors]

  def average(self, learners, index, groups, inner_groups=None):
    """Level `index` averages `groups` of `learners`' params (in place);
    `inner_groups`: the level one in's groups (None: single learners)."""
    kind = self.kinds[index]
    inner_groups = inner_groups or [(i,) for i in range(len(learners))]
    for group in groups:
      read = []
      for inner in [g for g in inner_groups if g[0] in group]:
        mean = np.mean([_float_buffer(learners[i]['params']).astype(
            np.float64) for i in inner], 0).astype(np.float32)
        change = mean - self.anchors[index][inner[0]]
        if self.feedback[index]:
          change = change + self.residuals[index][inner[0]]
        values = compress_values(change, kind)
        if self.feedback[index]:
          for i in inner:
            self.residuals[index][i] = change - values
        read.append(values.astype(np.float64))
      mean = compress_values(np.mean(read, 0).astype(np.float32), kind)
      model = self.anchors[index][group[0]] + mean
      for i in group:
        learners[i]['params'] = _unbuffer(model, learners[i]['params'])

  def after_event(self, learners, index, common=None):
    """Level `index` (and every level inside it) now holds common models;
    `common`: per learner, the common model its groups restart from
    (default: its parameters)."""
    models = common or [l['params'] for l in learners]
    for k in range(index + 1):
      self.anchors[k] = [_float_buffer(m) for m in models]


def _stream(learners, levels, fragments, due, outers, drift, step):
  """The fragment averagings `due` ((level index, fragments) pairs) after
  `step`, leaf by leaf: each leaf takes its widest due level's group mean
  (and with `outers` at the outermost, that fragment's outer step)."""
  if not due:
    return
  owner = {}  # Leaf index -> (level index, fragment) averaging it.
  for index, fs in due:
    for f in fs:
      for leaf in fragments[index][f]:
        if leaf not in owner or owner[leaf][0] < index:
          owner[leaf] = (index, f)
  widest = max(index for index, _ in due)
  leaves = [jax.tree.leaves(l['params']) for l in learners]
  if drift is not None:
    mine = sorted(leaf for leaf, (index, _) in owner.items()
                  if index == widest)
    drift.append(_drift([{'params': [x[i] for i in mine]} for x in leaves],
                        levels, levels[widest], step))
  new = [list(x) for x in leaves]
  for leaf, (index, _) in owner.items():
    for group in levels[index].groups:
      mean = np.mean([np.asarray(leaves[i][leaf], np.float64)
                      for i in group], 0)
      for i in group:
        new[i][leaf] = mean.astype(np.asarray(leaves[i][leaf]).dtype)
  if outers is not None:
    top = len(levels) - 1
    for f in sorted({f for index, f in owner.values() if index == top}):
      mine = fragments[top][f]
      stepped = outers[f].step([new[0][i] for i in mine])
      for x in new:
        for i, value in zip(mine, stepped):
          x[i] = value
  for l, x in zip(learners, new):
    l['params'] = jax.tree.unflatten(jax.tree.structure(l['params']), x)


def _average_parts(learners, level, parts, reset_opt_state):
  """Each group of `level` takes its mean of `parts`; then, with
  `reset_opt_state`, the optimizer's floating state is zeroed."""
  for part in parts:
    for group in level.groups:
      mean = _group_mean([l[part] for l in learners], group)
      for i in group:
        learners[i][part] = mean
  if reset_opt_state:
    for group in level.groups:
      for i in group:
        learners[i]['opt_state'] = _zero_floats(learners[i]['opt_state'])


def _zero_floats(tree):
  return jax.tree.map(
      lambda x: np.zeros_like(x) if np.issubdtype(np.asarray(x).dtype,
                                                  np.floating) else x, tree)


def _f64(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _cast_like(tree, like):
  return jax.tree.map(lambda x, l: np.asarray(x).astype(np.asarray(l).dtype),
                      tree, like)


def run(learner: Learner, learners: list[dict], levels, average, images,
        labels, sampler, steps: int, first_step: int = 0, outer=None,
        reset_opt_state=False, sync_warmup=0, drift=None, level_at=None,
        compression=None, delay=None, delay_mix=None, snapshots=None,
        fragments=None, fragment_outers=None):
  """Trains `learners` (dicts of params/batch_stats/opt_state/rng) in place.

  `reset_opt_state`: the optimizer's floating state (momentum) of every
  learner in an averaged group is zeroed after the averaging.
  `sync_warmup` W: steps 1..W are synchronous SGD (`_warmup_step`), each
  counted as the outermost level's averaging; periods count from W after
  that. `drift`: a list that gets, per averaging,
  `(step, level index, drift, spread)`: the mean over learners of the
  squared distance of their parameters from their group's mean, and (at
  the outermost level, else None) of their next-level group's mean from
  the global mean, before averaging, in float64. `level_at`: a function
  of the step t (1-based) giving the index into `levels` of the averaging
  after it, or None; it replaces the periods (steps 1..`sync_warmup` stay
  the warmup's).
  `compression`: a `RefCompression`; its levels of kind other than 'none'
  average the parameters through it.
  `delay`: per level, tau: the level's averaging after step H (past the
  warmup) averages each group's parameters of step H - tau, and learner j
  becomes `mean_group(x_j,H-tau) + (x_j,H - x_j,H-tau)`, or with
  `delay_mix` alpha for the level (per level, None: keep the progress)
  `(1 - alpha) mean_group(x_j,H-tau) + alpha x_j,H`; with `outer` at the
  outermost level, the outer step takes the snapshot's mean in place of
  the mean. The other averaged parts average at H; the drift is the
  snapshot's. `snapshots` (a dict, level index -> per-learner parameters
  of step H - tau) carries open windows into a later call (a resumed
  run).
  `fragments`: per level, its parameter fragments as tuples of leaf
  indices (in `jax.tree.leaves` order); fragment f of a level of period T
  and F fragments averages after the steps done with (done - W) % T ==
  floor(T (f + 1) / F) % T (every warmup step: all of the outermost's);
  each leaf takes the mean of the widest level due on it, and the other
  averaged parts follow the whole periods. `fragment_outers`: with
  `fragments`, one `RefOuterSGD` per fragment of the outermost level (over
  a list of its leaves), in place of `outer`. The drift is the widest
  due level's, over the leaves it averages.
  Returns the list of per-learner, per-step losses.
  """
  delay = list(delay or [0] * len(levels))
  delay_mix = list(delay_mix or [None] * len(levels))
  snapshots = {} if snapshots is None else snapshots

  def due_after(done):
    """The levels that average after step `done`."""
    if level_at is not None:
      index = level_at(done)
      return [] if index is None else [levels[index]]
    if done <= sync_warmup:
      return levels[-1:]
    return [lvl for lvl in levels if (done - sync_warmup) % lvl.period == 0]

  def fragments_due(done):
    """(level index, fragment indices) pairs due after step `done`."""
    if done <= sync_warmup:
      return [(len(levels) - 1, tuple(range(len(fragments[-1]))))]
    pairs = []
    for index, (level, parts) in enumerate(zip(levels, fragments)):
      count, period = len(parts), level.period
      fs = tuple(f for f in range(count) if (done - sync_warmup) % period ==
                 (period * (f + 1) // count) % period)
      if fs:
        pairs.append((index, fs))
    return pairs

  step_fn = jax.jit(learner.step)
  losses = []
  for t in range(first_step, first_step + steps):
    done = t + 1
    if done <= sync_warmup:
      losses.append(_warmup_step(learner, learners, levels, average, images,
                                 labels, sampler, t, outer, drift,
                                 compression, fragments, fragment_outers))
      continue
    indices = sampler.indices(t)
    row = []
    for p, l in enumerate(learners):
      key = step_key(l['rng'], t)
      l['params'], l['batch_stats'], l['opt_state'], loss = step_fn(
          l['params'], l['batch_stats'], l['opt_state'], key,
          images[indices[p]], labels[indices[p]])
      row.append(float(loss))
    losses.append(row)
    # Snapshots for the late averagings whose window opens here.
    for index, tau in enumerate(delay):
      ahead = due_after(done + tau)
      if (tau and done + tau > sync_warmup and ahead and
          levels.index(ahead[-1]) == index):
        snapshots[index] = [jax.tree.map(np.copy, l['params'])
                            for l in learners]
    due = due_after(done)
    if fragments is not None:
      _stream(learners, levels, fragments, fragments_due(done),
              fragment_outers, drift, done)
      if due:
        _average_parts(learners, due[-1], [p for p in average
                                           if p != 'params'],
                       reset_opt_state)
      continue
    if due:
      level = due[-1]  # Levels go narrow to wide: the widest wins.
      index = levels.index(level)
      late = delay[index] and done > sync_warmup
      if late:
        snapshot = snapshots.pop(index)
        if drift is not None:
          drift.append(_drift([{'params': p} for p in snapshot], levels,
                              level, done))
        common = [None] * len(learners)
        for group in level.groups:
          mean = _group_mean(snapshot, group)
          if outer is not None and level is levels[-1]:
            mean = outer.step(mean)
          for i in group:
            common[i] = mean
            mix = delay_mix[index]
            if mix is None:
              new = jax.tree.map(lambda m, x, s: m + (x - s), _f64(mean),
                                 _f64(learners[i]['params']),
                                 _f64(snapshot[i]))
            else:
              new = jax.tree.map(lambda m, x: (1 - mix) * m + mix * x,
                                 _f64(mean), _f64(learners[i]['params']))
            learners[i]['params'] = _cast_like(new, snapshot[i])
        _average_parts(learners, level, [p for p in average
                                         if p != 'params'], reset_opt_state)
        if compression is not None:
          compression.after_event(learners, index, common)
        continue
      if drift is not None:
        drift.append(_drift(learners, levels, level, done))
      parts = list(average)
      if (compression is not None and 'params' in parts and
          compression.kinds[index] != 'none'):
        compression.average(learners, index, level.groups,
                            levels[index - 1].groups if index else None)
        parts.remove('params')
      _average_parts(learners, level, parts, reset_opt_state)
      if outer is not None and level is levels[-1]:
        new = outer.step(learners[0]['params'])
        for l in learners:
          l['params'] = new
      if compression is not None:
        compression.after_event(learners, index)
  return losses


def _warmup_step(learner, learners, levels, average, images, labels,
                 sampler, t, outer, drift, compression, fragments,
                 fragment_outers):
  """Step t of the synchronous warmup, written out: post-local SGD's
  synchronous SGD. Every learner's gradient at its (common) model, the
  float64 mean of them applied by every learner's own optimizer (so the
  optimizer states stay equal too); then the outermost level's averaging
  of the other parts (no reset: synchronous SGD keeps its momentum), its
  outer step, and a zero drift. Returns the step's losses."""
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
  top = levels[-1]
  _average_parts(learners, top, [p for p in average
                                 if p not in ('params', 'opt_state')], False)
  if drift is not None:
    drift.append(_drift(learners, levels, top, t + 1))
  if fragment_outers is not None:
    new = list(jax.tree.leaves(learners[0]['params']))
    for f, mine in enumerate(fragments[-1]):
      for i, value in zip(mine, fragment_outers[f].step(
          [new[i] for i in mine])):
        new[i] = value
    model = jax.tree.unflatten(jax.tree.structure(learners[0]['params']), new)
    for l in learners:
      l['params'] = model
  elif outer is not None:
    model = outer.step(learners[0]['params'])
    for l in learners:
      l['params'] = model
  if compression is not None:
    compression.after_event(learners, len(levels) - 1)
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
