r"""Predicted communication and time per epoch: an alpha-beta model.

  python benchmarks/cost_table.py --learners=8,128,1024 --k1=4 --k2=8

Compares synchronous SGD, K-AVG and Hier-AVG on one cluster. Every averaging
event is an all-reduce of one learner's averaged state (`model_bytes`, the
number `averaging.bytes_per_learner` gives); event counts come from
`hier_schedule(...).counts`, so they agree exactly with the engine's counters.
Communication is not overlapped with compute.

Layout: one learner per device, `devices_per_node` devices per node, so P
learners fill P / devices_per_node nodes whatever the algorithm; a Hier-AVG
group of S learners is S <= devices_per_node devices of one node (the intended
case) or S / devices_per_node whole nodes.
"""

import dataclasses
from typing import Sequence

from hier_avg.errors import require
from hier_avg.core.schedule import hier_schedule

RESNET18_FP32_BYTES = 11_173_962 * 4


@dataclasses.dataclass(frozen=True)
class Link:
  latency_s: float     # alpha: seconds per message.
  bytes_per_s: float   # beta: bandwidth.

  def __post_init__(self):
    require(self.latency_s >= 0, f'link latency {self.latency_s} s must be '
            '>= 0.')
    require(self.bytes_per_s > 0, f'link bandwidth {self.bytes_per_s} B/s '
            'must be > 0.')


@dataclasses.dataclass(frozen=True)
class Cluster:
  intra: Link   # Device to device inside a node (NVLink), per device.
  inter: Link   # Node to node (Ethernet/IB), per node: its devices share it.
  devices_per_node: int

  def __post_init__(self):
    require(self.devices_per_node >= 1, 'devices_per_node='
            f'{self.devices_per_node} must be >= 1.')


def ring_allreduce_s(link: Link, n: int, nbytes: float) -> float:
  """Ring all-reduce of `nbytes` among `n` participants (0 when n == 1)."""
  require(n >= 1, f'an all-reduce needs >= 1 participants, got {n}.')
  return (2 * (n - 1) * link.latency_s +
          2 * (n - 1) / n * nbytes / link.bytes_per_s)


def allreduce_s(cluster: Cluster, n: int, nbytes: float) -> float:
  """All-reduce among `n` learners packed into nodes, done hierarchically.

  Reduce-scatter inside each node, then each device all-reduces its 1/d shard
  with its peers on the other nodes (the d rings run at once and share the
  node's link, so together they move the full `nbytes` over it), then
  all-gather inside the node. Intra reduce-scatter + all-gather cost exactly
  one intra ring all-reduce, so the total is two ring terms.

  Why hierarchical and not a flat ring over all n: the flat ring moves about
  the same bytes over each node's link but pays 2(n-1) inter-node latencies
  instead of 2(n/d-1) (at n = 1024: 2046 vs 510); NCCL and Horovod do the
  hierarchical thing, and a baseline (sync SGD) should not be a straw man.
  """
  per_node = min(n, cluster.devices_per_node)
  require(n % per_node == 0, f'{n} learners do not fill whole nodes of '
          f'{cluster.devices_per_node} devices; use a multiple of it.')
  return (ring_allreduce_s(cluster.intra, per_node, nbytes) +
          ring_allreduce_s(cluster.inter, n // per_node, nbytes))


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """Any of the three algorithms, as Hier-AVG parameters."""
  label: str
  group_size: int  # S: learners per local averaging.
  k1: int          # Local steps between averagings.
  k2: int          # Local averagings between global ones.


def sync() -> Algorithm:
  # Averaging the models after every step equals all-reducing the gradients.
  return Algorithm('sync SGD', 1, 1, 1)


def kavg(k: int) -> Algorithm:
  return Algorithm(f'K-AVG K={k}', 1, k, 1)


def hier(group_size: int, k1: int, k2: int) -> Algorithm:
  return Algorithm(f'Hier-AVG S={group_size} K1={k1} K2={k2}', group_size,
                   k1, k2)


@dataclasses.dataclass(frozen=True)
class Prediction:
  """Per learner, over the `steps` predicted (an epoch's worth, usually)."""
  steps: int
  local_events: int
  global_events: int
  local_bytes_per_learner: float   # Payload: events x averaged state bytes.
  global_bytes_per_learner: float
  local_comm_s: float
  global_comm_s: float
  compute_s: float
  sync_total_s: float              # Same cluster, steps and model, sync SGD.

  @property
  def comm_s(self) -> float:
    return self.local_comm_s + self.global_comm_s

  @property
  def total_s(self) -> float:
    return self.comm_s + self.compute_s

  @property
  def speedup_vs_sync(self) -> float:
    return self.sync_total_s / self.total_s if self.total_s else 1.0


def predict(cluster: Cluster, algorithm: Algorithm, num_learners: int,
            steps: int, model_bytes: float, step_s: float) -> Prediction:
  """Events, bytes and seconds of `steps` local steps of `algorithm`.

  Args:
    cluster: links and node size.
    algorithm: `sync()`, `kavg(k)` or `hier(s, k1, k2)`.
    num_learners: P.
    steps: local steps per learner (steps_per_epoch for one epoch).
    model_bytes: bytes of one learner's averaged state per event.
    step_s: compute seconds of one local step.
  """
  p, s = num_learners, algorithm.group_size
  require(p >= 1 and s >= 1 and p % s == 0, f'hier.group_size={s} must '
          f'divide hier.num_learners={p} (both >= 1).')
  d = cluster.devices_per_node
  require(s % d == 0 or d % s == 0, f'hier.group_size={s} must divide, or be '
          f'a multiple of, devices_per_node={d}, so groups tile the nodes.')
  require(steps >= 0, f'steps={steps} must be >= 0.')
  require(algorithm.k1 >= 1 and algorithm.k2 >= 1,
          f'k1={algorithm.k1} and k2={algorithm.k2} must be >= 1.')
  require(model_bytes >= 0 and step_s >= 0, f'model_bytes={model_bytes} and '
          f'step_s={step_s} must be >= 0.')
  counts = hier_schedule(algorithm.k1, algorithm.k2).counts(steps)
  # Averaging among one learner is a no-op: it sends nothing.
  local_bytes = counts['local'] * model_bytes if s > 1 else 0.0
  global_bytes = counts['global'] * model_bytes if p > 1 else 0.0
  compute_s = steps * step_s
  # One all-reduce per event; `averaging` issues one per dtype, so a state
  # of several float dtypes pays a few more latencies, not modeled here.
  local_comm_s = counts['local'] * allreduce_s(cluster, s, model_bytes)
  global_comm_s = counts['global'] * allreduce_s(cluster, p, model_bytes)
  if algorithm == sync():
    sync_total_s = local_comm_s + global_comm_s + compute_s
  else:
    sync_total_s = predict(cluster, sync(), p, steps, model_bytes,
                           step_s).total_s
  return Prediction(steps, counts['local'], counts['global'], local_bytes,
                    global_bytes, local_comm_s, global_comm_s, compute_s,
                    sync_total_s)


def epoch_table(cluster: Cluster, learners: Sequence[int],
                algorithms: Sequence[Algorithm], model_bytes: float,
                step_s: float, num_examples: int, batch_size: int,
                epochs: int) -> str:
  """A Markdown table of per-epoch figures, averaged over `epochs` epochs.

  An epoch is num_examples / (P B) steps, a fraction when P B > num_examples
  (the engine refuses those: B > N / P), and an averaging period can exceed
  an epoch, so counts are taken over the whole run and divided by `epochs`.
  """
  require(epochs >= 1 and batch_size >= 1 and num_examples >= 1,
          'epochs, batch_size and num_examples must be >= 1.')
  gb = 1e9
  rows = ['| P | nodes | steps/epoch | algorithm | local avg/epoch | '
          'global avg/epoch | local GB/learner/epoch | global GB/learner/epoch '
          '| comm s/epoch | total s/epoch | speedup vs sync |',
          '|' + '---|' * 11]
  for p in learners:
    steps = round(num_examples / (p * batch_size) * epochs)
    nodes = -(-p // cluster.devices_per_node)
    for algorithm in algorithms:
      r = predict(cluster, algorithm, p, steps, model_bytes, step_s)
      rows.append(
          f'| {p} | {nodes} | {steps / epochs:.2f} | {algorithm.label} | '
          f'{r.local_events / epochs:.2f} | {r.global_events / epochs:.2f} | '
          f'{r.local_bytes_per_learner / gb / epochs:.3g} | '
          f'{r.global_bytes_per_learner / gb / epochs:.3g} | '
          f'{r.comm_s / epochs:.3g} | {r.total_s / epochs:.3g} | '
          f'{r.speedup_vs_sync:.2f} |')
  return '\n'.join(rows)
