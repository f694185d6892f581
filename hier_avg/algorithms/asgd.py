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
from hier_avg.core.learner import Learner, step_key
from hier_avg.core.schedule import Schedule
from hier_avg.core.state import TrainState
from hier_avg.core.topology import Topology
from hier_avg.runtime import communication, execution
from hier_avg.runtime.algorithm import Algorithm

# The communication channel's name and event count in the metrics
# (`gradient_exchanges`, `gradient_bytes_per_learner`, ...).
EXCHANGE = 'gradient'
EVENTS = f'{EXCHANGE}_exchanges'


def make(learner: Learner, topology: Topology, staleness: int,
         learner_loop: str = 'vmap') -> Algorithm:
  """ASGD with staleness tau = `staleness` on `topology`'s learners."""
  nblock = len(topology.grid_shape)
  tau = staleness

  def extend_state(state: TrainState) -> TrainState:
    if not tau:
      return state
    # Before step tau the past models are all the initial model.
    return state.replace(stale=jax.tree.map(
        lambda x: jnp.broadcast_to(
            jnp.expand_dims(x, nblock),
            x.shape[:nblock] + (tau,) + x.shape[nblock:]), state.params))

  def local_step(state: TrainState, batch):
    """Every learner's gradient on the stale model, then the P updates."""
    block_shape = state.rng.shape
    if tau:
      slot = state.step % tau
      read = jax.tree.map(
          lambda x: lax.dynamic_index_in_dim(x, slot, nblock, False),
          state.stale)
    else:
      read = state.params

    def one(params, batch_stats, rng, batch):
      loss, batch_stats, grads = learner.loss_and_grads(
          params, batch_stats, step_key(rng, state.step), *batch)
      return grads, batch_stats, loss

    grads, batch_stats, loss = execution.map_block(
        one, learner_loop, nblock, read, state.batch_stats, state.rng, batch)
    # The server: every learner's gradient, applied in learner order.
    grads = averaging.gather_learners(grads, topology)
    grads = jax.tree.map(lambda g: g.reshape((-1,) + g.shape[nblock:]),
                         grads)
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

  def channels(state: TrainState) -> dict[str, communication.Channel]:
    """Per step each learner sends one gradient (the size of its model)."""
    one = communication.one_learner(state.params, nblock)
    nbytes = averaging.bytes_per_learner(one)
    # Every learner's gradient reaches every learner: across the nodes.
    return {EXCHANGE: communication.Channel(
        EVENTS, averaging.gathers_per_event(one, topology), nbytes,
        between_hosts_bytes_per_learner=nbytes)}

  return Algorithm(
      description=f'simulated ASGD with staleness {tau}',
      schedule=Schedule(()), local_step=local_step,
      channels=channels, event_counts=lambda steps: {EXCHANGE: steps},
      extra_state=('stale',) if tau else (), extend_state=extend_state)
