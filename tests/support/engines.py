"""Tiny models, data, learners and engines, and running them round by round."""

import dataclasses
import re

import chex
import flax.linen as nn
import jax
import numpy as np
import optax

from hier_avg.data import datasets
from hier_avg.core import optim
from hier_avg.core import state as state_lib
from hier_avg.data import sampling
from hier_avg.algorithms import asgd, hierarchical
from hier_avg.core.policies import AveragingPolicy
from hier_avg.runtime.engine import Engine
from hier_avg.runtime.execution import Execution
from hier_avg.core.learner import Learner
from hier_avg.models import MLP
from hier_avg.models import layers as layers_lib
from hier_avg.core.hierarchy import Hierarchy
from hier_avg.core.topology import make_topology

from hier_avg import config_keys
from hier_avg.run import checkpoint
from tests.support import reference

IMAGE_SIZE = 8


class TinyBNNet(nn.Module):
  """conv + BatchNorm + dense: exercises averaged BatchNorm statistics."""
  num_classes: int = 10
  layers: layers_lib.Layers = layers_lib.DEFAULT_LAYERS

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.layers.conv(4, (3, 3), use_bias=True)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x).mean(axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


def tiny_bn_batch_moments(params, images, mean, std, batch_size):
  """TinyBNNet's BatchNorm statistics recomputed independently, in numpy.

  The convolution's output on each batch of `batch_size` of `images` (in
  order, normalized by `mean` and `std`), its mean and biased variance over
  N, H, W, averaged over the batches.
  """
  conv = jax.tree.map(np.asarray, params['Conv_0'])
  means, variances = [], []
  for start in range(0, len(images), batch_size):
    x = (images[start:start + batch_size] / 255.0 - mean) / std
    y = jax.lax.conv_general_dilated(
        np.asarray(x, np.float32), conv['kernel'], (1, 1), 'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    y = np.asarray(y, np.float64) + conv['bias']
    means.append(y.mean(axis=(0, 1, 2)))
    variances.append(y.var(axis=(0, 1, 2)))
  return np.mean(means, 0), np.mean(variances, 0)


MODELS = {'mlp': lambda: MLP(num_classes=10, hidden=32), 'bn': TinyBNNet,
          'bn_im2col': lambda: TinyBNNet(
              layers=layers_lib.make_layers('im2col'))}


def opt_config(**overrides):
  """The `opt` block at its registered defaults, set for tiny tests."""
  c = config_keys.defaults().opt
  c.update(dict(lr=0.05, weight_decay=1e-3, schedule='constant',
                milestones=()), **overrides)
  return c


def tiny_data(num_train=512, seed=0):
  return datasets.synthetic(num_train, 64, IMAGE_SIZE, 10, seed)


def make_learner(model='mlp', data=None, augment=True, **opt_overrides):
  data = data or tiny_data()
  opt = opt_config(**opt_overrides)
  tx = optim.make_optimizer(opt, optim.learning_rate_schedule(opt, 10, 100))
  return Learner(MODELS[model](), tx, data.mean, data.std, augment)


def levels_hierarchy(pairs, num_learners=8, sync_warmup=0) -> Hierarchy:
  """A `Hierarchy` of (group size, period) pairs, innermost first."""
  sizes, periods = zip(*pairs)
  return Hierarchy(num_learners, sizes, periods, sync_warmup)


def bn_setup(num_learners=8):
  """Tiny data, the BatchNorm net's learner and a sampler for
  `num_learners`: what the engine's oracle tests train."""
  data = tiny_data()
  return data, make_learner('bn', data), make_sampler(data, num_learners)


def outer_sgd(options):
  """The outer optimizer an oracle test's `options['outer']` = (lr,
  momentum) asks for (optax SGD), or None without one."""
  if 'outer' not in options:
    return None
  lr, momentum = options['outer']
  return optax.sgd(lr, momentum=momentum)


def make_engine(learner, num_learners, group_size, k1, k2, mesh=(-1, -1),
                *args, **kwargs):
  """A two-level Hier-AVG engine (`make_levels_engine`'s other arguments)."""
  return make_levels_engine(learner, Hierarchy(
      num_learners, (group_size, num_learners), (k1, k1 * k2)), mesh,
                            *args, **kwargs)


def make_levels_engine(learner, hierarchy, mesh=None,
                       average=('params', 'batch_stats'), round_loop='auto',
                       pack='auto', outer_tx=None, reset_opt_state=False,
                       drift=True, spread=False, compress=(),
                       error_feedback=(), delay=(), delay_mix=(),
                       fragments=(), membership=None):
  """A Hier-AVG engine of `hierarchy`'s levels; `mesh`: devices per grid
  axis (None: as many as fit); `average`: the averaged parts of the state."""
  grid = hierarchy.grid_shape
  topology = make_topology(grid, hierarchy.axis_names,
                           mesh or (-1,) * len(grid))
  policy = AveragingPolicy(
      batch_stats='average' if 'batch_stats' in average else 'local',
      opt_state=('reset' if reset_opt_state else
                 'average' if 'opt_state' in average else 'local'))
  run = Execution.resolve(pack, round_loop, 16, topology.platform)
  algorithm = hierarchical.make(learner, topology, hierarchy.schedule(),
                                policy, outer_tx, run.learner_loop, drift,
                                spread, compress, error_feedback, delay,
                                delay_mix, fragments, membership)
  return Engine(learner, topology, algorithm, run)


def train_on_meshes(hierarchy, meshes, steps):
  """`hierarchy`'s learners (BatchNorm net, vmapped) trained `steps` steps
  on each mesh in `meshes`: {mesh: (mesh shape got, (params, batch_stats))}.

  Vmapped: unrolled, many learners per device compile one copy of the step
  each (minutes on CPU), and this is about where learners live, not how a
  device packs them.
  """
  data = tiny_data()
  learner = make_learner('bn', data)
  sampler = make_sampler(data, hierarchy.num_learners)
  results = {}
  for mesh in meshes:
    engine = make_levels_engine(learner, hierarchy, mesh, pack='vmap')
    state = run_engine(engine, data, sampler, steps)
    results[mesh] = (engine.topology.mesh_shape, jax.tree.map(
        np.asarray, (state.params, state.batch_stats)))
  return results


def make_asgd_engine(learner, topology, staleness, pack='auto'):
  run = Execution.resolve(pack, 'auto', 16, topology.platform)
  return Engine(learner, topology,
                asgd.make(learner, topology, staleness, run.learner_loop),
                run)


def guard_retraces(engine, steps, cut_every=()):
  """Makes tracing any round of the first `steps` steps twice fail.

  Every distinct round program (`Engine.programs_of`) may be traced once;
  each trace of a round calls the algorithm's `local_step` (or the warmup's
  `sync_step`) once per step it unrolls (once per part with a scan), so
  `chex.assert_max_traces` on them counts traces.
  """
  rounds = list(engine.schedule.rounds(0, steps, cut_every))
  programs = {engine.programs_of([r]).pop(): r for r in rounds}
  scan = engine.execution.step_loop == 'scan'
  calls = {False: 0, True: 0}
  for r in programs.values():
    calls[r.synchronous] += (len(r.starts) + 1) if scan else r.length
  chex.clear_trace_counter()
  replaced = {'local_step': chex.assert_max_traces(
      engine.algorithm.local_step, n=max(1, calls[False]))}
  if engine.algorithm.sync_step is not None:
    replaced['sync_step'] = chex.assert_max_traces(
        engine.algorithm.sync_step, n=max(1, calls[True]))
  engine.algorithm = dataclasses.replace(engine.algorithm, **replaced)


def run_engine(engine, data, sampler, steps, seed=0, state=None,
               cut_every=(), streamed=False, first_step=0, calls=None):
  """Trains round by round with the engine's schedule; the final state.

  `streamed`: the host gathers each round's minibatches and passes them, as
  for a streamed data set, instead of the indices into resident data.
  `first_step`: where `state` stands (a resumed run); `steps` more follow.
  `calls`: a list that gets `(first step, length)` of each round run.
  """
  if state is None:
    state = engine.init_state(seed, data.image_shape)
  images, labels = engine.topology.put_replicated(data.train_images,
                                                  data.train_labels)
  for round_ in engine.schedule.rounds(first_step, first_step + steps,
                                       cut_every):
    if calls is not None:
      calls.append((round_.first, round_.length))
    if streamed:
      # [K, P, B]: learner ids in order, as one process holding all.
      indices = sampler.round_indices(round_.first, round_.length)
      inputs = engine.topology.put_round_batches(data.train_images[indices],
                                                 data.train_labels[indices])
    else:
      inputs = (images, labels, engine.topology.put_round_indices(
          sampler, round_.first, round_.length))
    state, _ = engine.run_round(state, round_, inputs, streamed)
    jax.block_until_ready(state)
  return state


def assert_same_programs(engine, other, data, sampler, steps):
  """Both engines compile the same program for each round of the first
  `steps` steps (the lowered text, source locations aside).

  Then their runs are equal to the last bit on any CPU: the same programs
  on the same inputs. Otherwise bitwise equality is XLA's code
  generation's to give (README: resuming).
  """
  state = engine.init_state(0, data.image_shape)
  images, labels = engine.topology.put_replicated(data.train_images,
                                                  data.train_labels)
  rounds = list(engine.schedule.rounds(0, steps))
  assert rounds == list(other.schedule.rounds(0, steps))
  for round_ in rounds:
    indices = engine.topology.put_round_indices(sampler, round_.first,
                                                round_.length)
    a, b = (re.sub(r'loc\(.*?\)', '', e.round_program(round_).lower(
        state, images, labels, indices).as_text()) for e in (engine, other))
    assert a == b, f'the round {round_} compiles to another program'


def make_sampler(data, num_learners, batch_size=4, mode='partition', seed=0):
  return sampling.Sampler(len(data.train_images), num_learners, batch_size,
                          mode, seed)


def learner_states(state, grid_ndim=2):
  """Engine state -> list of per-learner dicts of numpy trees."""
  n = state.rng.size
  state = state_lib.per_learner(state, state.rng.shape)
  names = ('params', 'batch_stats', 'opt_state', 'rng') + (
      ('outer',) if state.outer is not None else ())
  parts = {p: reference.per_learner(getattr(state, p), grid_ndim, n)
           for p in names}
  return [{p: parts[p][i] for p in parts} for i in range(n)]


def straight_and_resumed(engine, data, sampler, steps: int, stop: int,
                         directory: str):
  """`(straight, part, resumed)`: `steps` steps run without a stop; the
  same run stopped after step `stop`; and that, saved in `directory`,
  restored and resumed to the end.

  Both cut their rounds at `stop` (and its multiples), so the resumed run
  makes exactly the compiled calls of the uninterrupted one (asserted):
  what the launcher guarantees, whose stops fall at its cadence's cuts.
  Bitwise equality of the two is then a fact, not XLA's code generation's
  luck: two programs that split the same steps differently may round
  differently on another CPU.
  """
  straight_calls, resumed_calls = [], []
  straight = run_engine(engine, data, sampler, steps, cut_every=(stop,),
                        calls=straight_calls)
  part = run_engine(engine, data, sampler, stop, cut_every=(stop,),
                    calls=resumed_calls)
  restored = checkpoint_round_trip(
      engine, part, stop, engine.init_state(1, data.image_shape), directory)
  resumed = run_engine(engine, data, sampler, steps - stop, state=restored,
                       first_step=stop, cut_every=(stop,),
                       calls=resumed_calls)
  assert resumed_calls == straight_calls, (resumed_calls, straight_calls)
  return straight, part, resumed


def checkpoint_round_trip(engine, state, step: int, fresh, directory: str,
                          restore_with=None):
  """`state` of `engine`, saved as the checkpoint of `step` in `directory`
  and restored into the structure (and shardings) of `fresh`, as a resumed
  run of `restore_with` (default: `engine`; one on another mesh, say) gets
  it."""
  restore_with = restore_with or engine
  ckpts = checkpoint.Checkpoints(directory, keep=1)
  ckpts.save(engine.portable(state), {'step': step, 'fingerprint': {}})
  ckpts.wait()
  restored, _ = ckpts.restore(restore_with.portable(fresh))
  ckpts.close()
  return restore_with.from_portable(restored)
