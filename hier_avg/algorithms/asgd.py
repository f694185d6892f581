"""Simulated asynchronous SGD (Downpour-style), the K-AVG papers' baseline.

One shared model (a parameter server). Every step each of the P learners
computes the gradient of its own minibatch on the shared model as it was
`staleness` (tau) steps earlier, and the server applies the P gradients one
after another, in learner order, each as one optimizer update: P updates
per step, each on a gradient up to tau steps old. The work per step equals
a Hier-AVG step's (P minibatches of B), so the two compare on equal work.
With P = 1 and tau = 0 this is plain SGD.

On the mesh every learner holds a copy of the shared model (all equal),
the P gradients are all-gathered every step, and every device applies
them, so the copies stay equal without a broadcast. BatchNorm running
statistics of the shared model are the mean of the learners' updates.
"""

import jax
import jax.numpy as jnp
from jax import lax

from hier_avg.core import averaging
from hier_avg.runtime import execution
from hier_avg.runtime.engine import Engine, LevelCost, _flatten_block, _unflatten_block
from hier_avg.core.learner import Learner, step_key
from hier_avg.core.schedule import make_schedule
from hier_avg.core.state import TrainState
from hier_avg.core.topology import Topology

# The communication event's name in the metrics (gradient_exchanges, ...).
EXCHANGE = 'gradient'


class AsgdEngine(Engine):
  """Rounds of simulated ASGD; the rest (data, evaluation) as `Engine`."""

  event_noun = 'exchanges'

  def __init__(self, learner: Learner, topology: Topology, staleness: int,
               round_loop: str = 'auto', max_unrolled_steps: int = 16,
               pack: str = 'auto'):
    self.staleness = staleness
    super().__init__(learner, topology, make_schedule(()), ('params',),
                     round_loop, max_unrolled_steps, pack)

  @property
  def keeps_stale_models(self) -> bool:
    return self.staleness > 0

  def _extend_state(self, state: TrainState) -> TrainState:
    if not self.staleness:
      return state
    nblock = len(self.topology.grid_shape)
    # Before step tau the past models are all the initial model.
    stale = jax.tree.map(
        lambda x: jnp.broadcast_to(
            jnp.expand_dims(x, nblock),
            x.shape[:nblock] + (self.staleness,) + x.shape[nblock:]),
        state.params)
    return state.replace(stale=stale)

  def event_counts(self, steps: int) -> dict[str, int]:
    return {EXCHANGE: steps}

  def communication(self, state: TrainState) -> dict[str, LevelCost]:
    """Per step each learner sends one gradient (the size of its model)."""
    one_learner = self.one_learner(state.params)
    return {EXCHANGE: LevelCost(
        averaging.gathers_per_event(one_learner, self.topology),
        averaging.bytes_per_learner(one_learner))}

  def _after_round(self, state, level):
    del level  # ASGD has no averaging schedule.
    return state

  def _block_step(self, state: TrainState, batch):
    """Every learner's gradient on the stale model, then the P updates."""
    topology, learner, tau = self.topology, self.learner, self.staleness
    nblock = len(topology.grid_shape)
    block_shape = state.rng.shape
    if tau:
      slot = state.step % tau
      read = jax.tree.map(
          lambda x: lax.dynamic_index_in_dim(x, slot, nblock, False),
          state.stale)
    else:
      read = state.params
    flat = _flatten_block((read, state.batch_stats, state.rng, batch),
                          nblock)

    def one(params, batch_stats, rng, batch):
      loss, batch_stats, grads = learner.loss_and_grads(
          params, batch_stats, step_key(rng, state.step), *batch)
      return grads, batch_stats, loss

    grads, batch_stats, loss = _unflatten_block(
        execution.map_learners(one, self.pack, *flat), block_shape)
    # The server: every learner's gradient, applied in learner order.
    grads = _flatten_block(averaging.gather_learners(grads, topology),
                           nblock)
    first = (0,) * nblock
    params = jax.tree.map(lambda x: x[first], state.params)
    opt_state = jax.tree.map(lambda x: x[first], state.opt_state)
    for p in range(topology.num_learners):
      params, opt_state = learner.apply_gradients(
          params, opt_state, jax.tree.map(lambda g, p=p: g[p], grads))
    copies = lambda tree: jax.tree.map(
        lambda x: jnp.broadcast_to(x, block_shape + x.shape), tree)
    new = state.replace(
        step=state.step + 1, params=copies(params),
        opt_state=copies(opt_state),
        batch_stats=averaging.average_block(batch_stats, topology.axis_names,
                                            topology))
    if tau:
      # The model before this step's updates is read tau steps later.
      new = new.replace(stale=jax.tree.map(
          lambda buf, x: lax.dynamic_update_index_in_dim(buf, x, slot,
                                                         nblock),
          state.stale, state.params))
    return new, loss
