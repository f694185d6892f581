"""Steps and averagings over the learners present, inside `shard_map`.

The device side of `core/membership.py`: each step takes, as data, which
learners are up and which come back. A learner that is down keeps its
state and its loss reads 0; one that comes back is first healed from its
nearest group with a live member. The state says who took the last step
(`TrainState.members['up']`), and each averaging is the mean over those
of its group (`averaging.average_present`), given to them only, and only
where they reach the level's minimum (`hier.min_members`).
"""

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from hier_avg.core import averaging
from hier_avg.core.membership import Membership
from hier_avg.core.policies import AveragingPolicy, reset_optimizer_state
from hier_avg.core.schedule import Level
from hier_avg.core.state import TrainState, first
from hier_avg.core.topology import Topology


def select(mask, yes, no):
  """Per learner (`mask` [block...]), the leaves of `yes` or of `no`."""
  def one(a, b):
    m = mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim))
    return jnp.where(m, a, b)
  return jax.tree.map(one, yes, no)


@dataclasses.dataclass(frozen=True)
class Presence:
  """A device block's steps and averagings with `membership`'s learners
  missing, healing and waiting."""
  topology: Topology
  levels: tuple[Level, ...]      # Innermost first.
  membership: Membership         # The outages and the rules.
  policy: AveragingPolicy

  @property
  def by_samples(self) -> bool:
    return self.membership.weighting == 'samples'

  def init(self, state: TrainState) -> TrainState:
    """Everyone up; with sample weights, per level, the steps each
    learner took since its group's last averaging."""
    members = {'up': jnp.ones(state.rng.shape, bool)}
    if self.by_samples:
      members['since'] = {level.name: jnp.zeros(state.rng.shape, jnp.int32)
                          for level in self.levels}
    return state.replace(members=members)

  def _depth(self, level: Level) -> int:
    return [l.name for l in self.levels].index(level.name)

  def average(self, state: TrainState, tree, level: Level):
    """`tree`'s mean over the members of each group of `level` that took
    the last step (weighted by the steps each took since the group's last
    averaging, with sample weights): (the means; {'averaged': whether the
    group reached its minimum, 'receives': whether the learner takes the
    means}, [block])."""
    up = state.members['up']
    weights = (up * state.members['since'][level.name] if self.by_samples
               else up)
    mean, total = averaging.average_present(tree, weights, level.axes,
                                            self.topology)
    count = (averaging.average_present({}, up, level.axes, self.topology)[1]
             if self.by_samples else total)
    averaged = count >= self.membership.minimum(self._depth(level))
    return mean, {'averaged': averaged, 'receives': averaged & up}

  def keep_absent(self, present, new: TrainState, old: TrainState,
                  level: Level) -> TrainState:
    """`new` (after an event of `level`) where `present['receives']`,
    `old` for the others; the outer state as `old` where the group did not
    average; the step counts of the groups that averaged restart."""
    receives = present['receives']
    state = new.replace(**{p: select(receives, getattr(new, p),
                                     getattr(old, p))
                           for p in ('params', 'batch_stats', 'opt_state')})
    if self.by_samples:
      since = dict(state.members['since'])
      for inner in self.levels[:self._depth(level) + 1]:
        since[inner.name] = jnp.where(present['averaged'], 0,
                                      since[inner.name])
      state = state.replace(members={**state.members, 'since': since})
    if new.outer is None:
      return state
    names = self.topology.axis_names
    averaged = first(present['averaged'], tuple(
        i for i, a in enumerate(names) if a in new.outer.axes))
    return state.replace(outer=new.outer.replace(value=select(
        averaged, new.outer.value, old.outer.value)))

  def step(self, local_step):
    """`local_step` taken by the learners that take it, after the healing
    of those coming back; batch: (images, labels, takes, up, returning,
    any returning)."""
    def step(state: TrainState, batch):
      images, labels, takes, up, returning, any_back = batch
      if self.membership.heal == 'nearest':
        state = lax.cond(any_back, lambda s: self._healed(s, up, returning),
                         lambda s: s, state)
      new, loss = local_step(state, (images, labels))
      kept = {part: select(takes, getattr(new, part), getattr(state, part))
              for part in ('params', 'batch_stats', 'opt_state')}
      members = {**state.members, 'up': up}
      if self.by_samples:
        members['since'] = {name: n + takes for name, n in
                            state.members['since'].items()}
      return (new.replace(members=members, **kept),
              jnp.where(takes, loss, jnp.zeros_like(loss)))
    return step

  def _healed(self, state: TrainState, up, returning) -> TrainState:
    """The learners `returning` given the mean of their nearest group with
    a live member (up now and before): its parameters, and the parts the
    policy averages; a 'reset' optimizer state starts from zero."""
    live = up & ~returning
    parts = {'params': state.params}
    parts.update({p: getattr(state, p) for p in self.policy.averaged_parts
                  if p in ('batch_stats', 'opt_state')})
    done = jnp.zeros_like(returning)
    for level in self.levels:
      means, count = averaging.average_present(parts, live, level.axes,
                                               self.topology)
      take = returning & ~done & (count > 0)
      parts = select(take, means, parts)
      done = done | take
    if self.policy.opt_state == 'reset':
      parts['opt_state'] = select(
          returning, reset_optimizer_state(state.opt_state), state.opt_state)
    return state.replace(**parts)
