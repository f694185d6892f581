r"""Predicted communication and time per epoch: an alpha-beta model.

  python benchmarks/cost_table.py --learners=8,128,1024 --k1=4 --k2=8

Compares synchronous SGD, K-AVG and Hier-AVG of any depth on one cluster.
Every averaging event is an all-reduce of one learner's averaged state
(`model_bytes`, the number `averaging.bytes_per_learner` gives); event
counts come from `Hierarchy(...).schedule().counts`, so they agree exactly
with the engine's counters. A level may be compressed (`hier.compress`: a
float32 reduction inside its inner groups, then their compressed payloads
exchanged, `compressed_allreduce_s`), streamed in F fragments
(`hier.fragments`: F events of about 1/F of the bytes per period, so the
peak per event falls F-fold while the latencies grow F-fold) and late by
tau steps (`hier.delay`): each event's communication then runs during tau
steps of compute and only what exceeds `tau x step_s` is exposed. Nothing
else overlaps with compute.

A cluster is a list of tiers, innermost first, each joining `fan_out` units
of the tier inside it over one link: e.g. 8 GPUs per node over NVLink, 16
nodes per pod over InfiniBand, pods over a datacentre interconnect
(`TieredCluster`); `Cluster(intra, inter, devices_per_node)` is the two-tier
case of devices in nodes. An algorithm is a list of levels, innermost first,
of (group size, period), as `hier.levels` (`Algorithm`, `levels`); `sync()`,
`kavg(k)` and `hier(s, k1, k2)` are the usual ones.

Layout: one learner per device, packed innermost first, so P learners fill
the same devices whatever the algorithm; a group of S learners is S
consecutive devices, so S divides, or is a multiple of, the devices of each
bounded unit (node, pod): S <= devices per node in one node (the intended
case for the innermost level), or S / devices per node whole nodes of one
pod, or whole pods, and so on.
"""

import dataclasses
import math
from typing import Callable, Sequence

from hier_avg.core import compression
from hier_avg.core import exchange
from hier_avg.core import fragments as fragments_lib
from hier_avg.core import schedule as schedule_lib
from hier_avg.core.hierarchy import Hierarchy, per_level
from hier_avg.errors import require

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
class Tier:
  """`fan_out` units of the tier inside (devices, for the innermost tier)
  joined by `link` make one unit of this tier, called `unit` ('node',
  'pod'). `link.bytes_per_s` is per unit of the tier inside: per device for
  the innermost tier, per node for the next (a node's devices share it), per
  pod for the one after. `fan_out=None`: as many units as the learners need
  (the outermost tier only)."""
  fan_out: int | None
  link: Link
  unit: str = ''

  def __post_init__(self):
    require(self.fan_out is None or (isinstance(self.fan_out, int) and
                                     self.fan_out >= 1),
            f'tier fan-out {self.fan_out!r} must be an integer >= 1 (or None '
            'for an unbounded outermost tier).')
    require(isinstance(self.link, Link), f'tier link {self.link!r} must be a '
            'cost_model.Link.')


@dataclasses.dataclass(frozen=True)
class TieredCluster:
  """Tiers innermost first: `(Tier(8, nvlink, 'node'), Tier(16, ib, 'pod'),
  Tier(None, datacentre))` is nodes of 8 GPUs, pods of 16 nodes, and any
  number of pods."""
  tiers: tuple[Tier, ...]

  def __post_init__(self):
    object.__setattr__(self, 'tiers', tuple(self.tiers))
    require(self.tiers, 'a cluster needs at least one tier.')
    for i, tier in enumerate(self.tiers):
      require(isinstance(tier, Tier), f'tier {i} ({tier!r}) must be a '
              'cost_model.Tier(fan_out, link).')
      require(tier.fan_out is not None or i == len(self.tiers) - 1,
              f'tier {i} has fan_out=None; only the outermost tier may be '
              'unbounded.')

  @property
  def devices_per_node(self) -> int | None:
    return self.tiers[0].fan_out


@dataclasses.dataclass(frozen=True)
class Cluster:
  """Two tiers: devices in nodes, and as many nodes as needed."""
  intra: Link   # Device to device inside a node (NVLink), per device.
  inter: Link   # Node to node (Ethernet/IB), per node: its devices share it.
  devices_per_node: int

  def __post_init__(self):
    require(self.devices_per_node >= 1, 'devices_per_node='
            f'{self.devices_per_node} must be >= 1.')

  @property
  def tiers(self) -> tuple[Tier, ...]:
    return (Tier(self.devices_per_node, self.intra, 'node'),
            Tier(None, self.inter, 'cluster'))


AnyCluster = Cluster | TieredCluster


def unit_name(cluster: AnyCluster, i: int) -> str:
  return cluster.tiers[i].unit or f'tier-{i} unit'


def unit_devices(cluster: AnyCluster) -> tuple[int, ...]:
  """Devices in one unit of each bounded tier, innermost first."""
  sizes, size = [], 1
  for tier in cluster.tiers:
    if tier.fan_out is None:
      break
    size *= tier.fan_out
    sizes.append(size)
  return tuple(sizes)


def span(cluster: AnyCluster, n: int) -> tuple[int, ...]:
  """Participants per tier of an all-reduce among `n` learners packed
  innermost first: `m_i` units of tier i-1 (devices, for i = 0) in each
  unit of tier i, with `n = m_0 m_1 ... m_{T-1}`."""
  require(n >= 1 and n == int(n),
          f'an all-reduce needs a whole number >= 1 of participants, got {n}.')
  n = int(n)
  counts, rest = [], n
  for i, (tier, devices) in enumerate(
      zip(cluster.tiers, unit_devices(cluster) + (None,))):
    m = rest if tier.fan_out is None else min(rest, tier.fan_out)
    require(rest % m == 0, f'{n} learners do not fill whole '
            f'{unit_name(cluster, i)}s of {devices} devices; use a multiple '
            'of it.')
    counts.append(m)
    rest //= m
  require(rest == 1, f'{n} learners do not fit the cluster\'s '
          f'{math.prod(unit_devices(cluster))} devices; add an unbounded '
          'outermost tier (fan_out=None) or use fewer learners.')
  return tuple(counts)


def ring_allreduce_s(link: Link, n: int, nbytes: float) -> float:
  """Ring all-reduce of `nbytes` among `n` participants (0 when n == 1)."""
  require(n >= 1, f'an all-reduce needs >= 1 participants, got {n}.')
  return (2 * (n - 1) * link.latency_s +
          2 * (n - 1) / n * nbytes / link.bytes_per_s)


def allreduce_s(cluster: AnyCluster, n: int, nbytes: float) -> float:
  r"""All-reduce among `n` learners packed into the tiers, done hierarchically.

  With `m_i` participants at tier i (`span`), M = `nbytes` and tier i's link
  (alpha_i, beta_i):

    T(n, M) = sum_i [2 (m_i - 1) alpha_i + 2 (m_i - 1) / m_i * M / beta_i],

  one ring all-reduce of the full M per tier (a tier with m_i = 1 costs 0).

  Reduce-scatter inside each unit of the innermost tier (each device then
  holds a 1/m_0 shard), then reduce-scatter the shards across the next tier
  (1/(m_0 m_1) each), and so on; the outermost tier all-reduces its shards,
  and all-gathers retrace the way down. At tier i each of the m_0 ...
  m_{i-1} devices of a unit of tier i-1 runs a ring of m_i, with its peers
  in the other units, on its M / (m_0 ... m_{i-1}) shard; the rings run at
  once and share the unit's link, so together they move the full M over
  it. A reduce-scatter plus its all-gather cost exactly one ring
  all-reduce, hence one ring term of M per tier. With two tiers (nodes of
  d devices): an intra ring among min(n, d) plus an inter ring among n / d.

  Why hierarchical and not a flat ring over all n: the flat ring moves about
  the same bytes over each node's link but pays 2(n-1) inter-node latencies
  instead of 2(n/d-1) (at n = 1024: 2046 vs 510); NCCL and Horovod do the
  hierarchical thing, and a baseline (sync SGD) should not be a straw man.
  """
  return sum(ring_allreduce_s(tier.link, m, nbytes)
             for tier, m in zip(cluster.tiers, span(cluster, n)))


def compressed_allreduce_s(cluster: AnyCluster, n: int, inner: int,
                           nbytes: float, payload: float) -> float:
  r"""A compressed level's event among `n` learners: a float32 reduction
  inside groups of `inner`, then compressed shards exchanged between them.

  As `allreduce_s`, tier by tier, with the bytes each tier carries: the
  tiers inside an inner group (participants so far <= `inner`) run a ring
  all-reduce of the float32 `nbytes`, the tiers outside it one of the
  compressed `payload` (the engine's all-to-all of compressed shards and
  all-gather of the compressed means move what a ring's reduce-scatter
  and all-gather would: `averaging.average_compressed`),

    T = sum_{i inside} ring_i(M) + sum_{i outside} ring_i(D).
  """
  total, inside = 0.0, 1
  for tier, m in zip(cluster.tiers, span(cluster, n)):
    inside *= m
    total += ring_allreduce_s(tier.link, m,
                              nbytes if inside <= inner else payload)
  return total


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """Levels of averaging, innermost first, as `hier.levels`: each
  (group size, period in local steps); the outermost group size None (or
  P) means every learner. `sync_warmup` W: steps 1..W each end with the
  outermost averaging, then the periods count from W
  (`hier.sync_warmup_steps`)."""
  label: str
  levels: tuple[tuple[int | None, int], ...]
  sync_warmup: int = 0
  # Per level, innermost first, as `hier.compress` (`compression.
  # COMPRESSIONS`); empty: none.
  compress: tuple[str, ...] = ()
  # Per level, as `hier.delay` (steps tau) and `hier.fragments` (F);
  # empty: 0 and 1. The model prices any mix of the three, including
  # ones the engine does not run yet (delay or fragments with compression).
  delay: tuple[int, ...] = ()
  fragments: tuple[int, ...] = ()

  def __post_init__(self):
    for name in ('levels', 'compress', 'delay', 'fragments'):
      object.__setattr__(self, name, tuple(
          tuple(x) if name == 'levels' else x for x in getattr(self, name)))
    problems = compression.check_levels(self.compress, (), len(self.levels))
    require(not problems, f'{self.label}: {problems[0]}' if problems else '')
    levels = self.levels
    require(levels and all(len(level) == 2 for level in levels),
            f'{self.label}: levels={levels} must be one or more (group size, '
            'period) pairs.')
    for i, (size, period) in enumerate(levels):
      require(isinstance(period, int) and period >= 1,
              f'{self.label}: period {period!r} must be an integer >= 1.')
      require((size is None and i == len(levels) - 1) or
              (isinstance(size, int) and size >= 1),
              f'{self.label}: group size {size!r} must be an integer >= 1 '
              '(None: every learner, the outermost level only).')
    for (s_in, t_in), (s_out, t_out) in zip(levels, levels[1:]):
      require(s_out is None or s_out % s_in == 0,
              f'{self.label}: group size {s_out} must be a multiple of the '
              f'{s_in} inside it (groups nest).')
      require(t_out % t_in == 0, f'{self.label}: period {t_out} must be a '
              f'multiple of the {t_in} inside it.')
    require(isinstance(self.sync_warmup, int) and self.sync_warmup >= 0,
            f'{self.label}: sync_warmup={self.sync_warmup!r} must be an '
            'integer >= 0.')
    problems = (schedule_lib.check_delays(self.delay, (), self.periods) +
                fragments_lib.check(self.fragments, self.periods))
    require(not problems, f'{self.label}: {problems[0]}' if problems else '')

  def group_sizes(self, num_learners: int) -> tuple[int, ...]:
    *inner, (outer, _) = self.levels
    return tuple(s for s, _ in inner) + (
        num_learners if outer is None else outer,)

  @property
  def periods(self) -> tuple[int, ...]:
    return tuple(t for _, t in self.levels)

  def hierarchy(self, num_learners: int) -> Hierarchy:
    """The engine's `Hierarchy` for `num_learners` learners."""
    sizes, p = self.group_sizes(num_learners), num_learners
    require(sizes[-1] == p, f'{self.label}: the outermost group size '
            f'{sizes[-1]} must be hier.num_learners={p} (or None).')
    for inner, outer in zip(sizes, sizes[1:]):
      require(outer % inner == 0, f'{self.label}: group size {inner} must '
              f'divide the {outer} around it (hier.num_learners={p}).')
    return Hierarchy(p, sizes, self.periods, self.sync_warmup)

  def schedule(self, num_learners: int):
    """The engine's schedule of these levels, fragments and delays."""
    return self.hierarchy(num_learners).schedule().with_fragments(
        self.fragments).with_delays(self.delay)


def sync() -> Algorithm:
  # Averaging the models after every step equals all-reducing the gradients.
  return Algorithm('sync SGD', ((None, 1),))


def kavg(k: int) -> Algorithm:
  return Algorithm(f'K-AVG K={k}', ((None, k),))


def hier(group_size: int, k1: int, k2: int) -> Algorithm:
  return Algorithm(f'Hier-AVG S={group_size} K1={k1} K2={k2}',
                   ((group_size, k1), (None, k1 * k2)))


def describe_levels(pairs) -> str:
  """'(4, 4), (32, 16), (P, 64)': None as P."""
  return ', '.join(f'({"P" if s is None else s}, {t})' for s, t in pairs)


def levels(label: str, pairs, sync_warmup: int = 0, compress=(),
           delay=(), fragments=()) -> Algorithm:
  """Any depth: `levels('', ((4, 4), (32, 16), (None, 64)))`; an empty
  label becomes 'levels (4, 4), (32, 16), (P, 64)'. `compress`, `delay`,
  `fragments`: per level, as `hier.compress`, `hier.delay`,
  `hier.fragments`."""
  pairs = tuple(tuple(pair) for pair in pairs)
  return Algorithm(label or f'levels {describe_levels(pairs)}', pairs,
                   sync_warmup, tuple(compress), tuple(delay),
                   tuple(fragments))


@dataclasses.dataclass(frozen=True)
class LevelPrediction:
  """One level's share of a `Prediction`."""
  name: str                 # 'local', 'level1', ..., 'global', as the engine.
  group_size: int
  period: int
  events: int
  bytes_per_learner: float  # Payload: events x averaged state bytes.
  comm_s: float             # Communication, overlapped or not.
  # What one participant puts into an event (the peak): a learner's
  # averaged state, or a compressed level's payload of an inner group.
  event_bytes: float = 0.0
  hidden_s: float = 0.0     # Of comm_s, what ran during compute (delay).

  @property
  def exposed_s(self) -> float:
    """Communication the learners wait for."""
    return self.comm_s - self.hidden_s


@dataclasses.dataclass(frozen=True)
class Prediction:
  """Per learner, over the `steps` predicted (an epoch's worth, usually)."""
  steps: int
  levels: tuple[LevelPrediction, ...]  # Innermost first.
  compute_s: float
  sync_total_s: float              # Same cluster, steps and model, sync SGD.

  def level(self, name: str) -> LevelPrediction | None:
    return next((l for l in self.levels if l.name == name), None)

  @property
  def events(self) -> dict[str, int]:
    return {l.name: l.events for l in self.levels}

  def _of(self, name: str, field: str):
    level = self.level(name)
    return getattr(level, field) if level else 0

  # The two-level names; 0 where the algorithm has no such level (sync SGD
  # and K-AVG have only 'global').
  local_events = property(lambda self: self._of('local', 'events'))
  global_events = property(lambda self: self._of('global', 'events'))
  local_bytes_per_learner = property(
      lambda self: self._of('local', 'bytes_per_learner'))
  global_bytes_per_learner = property(
      lambda self: self._of('global', 'bytes_per_learner'))
  local_comm_s = property(lambda self: self._of('local', 'comm_s'))
  global_comm_s = property(lambda self: self._of('global', 'comm_s'))

  @property
  def bytes_per_learner(self) -> float:
    return sum(l.bytes_per_learner for l in self.levels)

  @property
  def comm_s(self) -> float:
    return sum(l.comm_s for l in self.levels)

  @property
  def exposed_s(self) -> float:
    return sum(l.exposed_s for l in self.levels)

  @property
  def total_s(self) -> float:
    return self.exposed_s + self.compute_s

  @property
  def speedup_vs_sync(self) -> float:
    return self.sync_total_s / self.total_s if self.total_s else 1.0


def check_tiles(cluster: AnyCluster, group_size: int, what: str) -> None:
  """Groups of `group_size` consecutive devices tile the cluster's units:
  the size divides, or is a multiple of, the devices of each bounded unit."""
  for i, devices in enumerate(unit_devices(cluster)):
    require(group_size % devices == 0 or devices % group_size == 0,
            f'{what} must divide, or be a multiple of, the '
            f'{devices} devices of a {unit_name(cluster, i)}, so groups tile '
            f'the {unit_name(cluster, i)}s.')


def predict(cluster: AnyCluster, algorithm: Algorithm, num_learners: int,
            steps: int, model_bytes: float, step_s: float) -> Prediction:
  """Events, bytes and seconds of `steps` local steps of `algorithm`.

  Args:
    cluster: tiers and links (`Cluster` or `TieredCluster`).
    algorithm: `sync()`, `kavg(k)`, `hier(s, k1, k2)` or `levels(...)`.
    num_learners: P.
    steps: local steps per learner (steps_per_epoch for one epoch).
    model_bytes: bytes of one learner's averaged state per event, float32
      (a compressed level sends `compression.payload_bytes` of it).
    step_s: compute seconds of one local step.
  """
  p = num_learners
  require(p >= 1 and p == int(p), f'hier.num_learners={p} must be a whole '
          'number >= 1.')
  p = int(p)
  sizes = algorithm.group_sizes(p)
  hierarchy = algorithm.hierarchy(p)
  names = hierarchy.level_names
  span(cluster, p)  # P fills whole units.
  for name, size in zip(names[:-1], sizes[:-1]):
    check_tiles(cluster, size, f'hier.group_size={size}' if len(sizes) == 2
                else f'{algorithm.label}: the {name} group size {size}')
  require(steps >= 0, f'steps={steps} must be >= 0.')
  require(model_bytes >= 0 and step_s >= 0, f'model_bytes={model_bytes} and '
          f'step_s={step_s} must be >= 0.')
  # A fragmented level counts its fragment events.
  counts = algorithm.schedule(p).counts(steps)
  # Averaging among one learner is a no-op: it sends nothing. One
  # all-reduce per event; `averaging` issues one per dtype, so a state of
  # several float dtypes pays a few more latencies, not modeled here.
  depth = len(sizes)
  kinds = per_level(algorithm.compress, depth, 'none')
  taus = per_level(algorithm.delay, depth, 0)
  pieces = per_level(algorithm.fragments, depth, 1)

  def level(name, size, inner, period, kind, tau, count):
    # model_bytes are float32 values, split evenly among the fragments
    # (the engine cuts at whole leaves: about evenly). A compressed level
    # reduces in float32 inside its inner groups, then exchanges one
    # payload per inner group (core/compression.py): a learner's share.
    share = model_bytes / count
    moved = exchange.event_bytes([(share / 4, 4)], kind, inner)
    nbytes, peak = moved.inside + moved.between, moved.payload
    event_s = (allreduce_s(cluster, size, share) if kind == 'none' else
               compressed_allreduce_s(cluster, size, inner, share, peak))
    nbytes, peak = (nbytes, peak) if size > 1 else (0.0, 0.0)
    events = counts[name]
    # The warmup's averagings (the outermost level's) are never late.
    late = events - (min(steps, algorithm.sync_warmup) * count
                     if name == names[-1] and tau else 0)
    return LevelPrediction(name, size, period, events, events * nbytes,
                           events * event_s, peak,
                           late * min(event_s, tau * step_s))

  predictions = tuple(level(*args) for args in zip(
      names, sizes, (1,) + sizes[:-1], algorithm.periods, kinds, taus,
      pieces))
  compute_s = steps * step_s
  if algorithm == sync():
    sync_total_s = sum(l.comm_s for l in predictions) + compute_s
  else:
    sync_total_s = predict(cluster, sync(), p, steps, model_bytes,
                           step_s).total_s
  return Prediction(steps, predictions, compute_s, sync_total_s)


def elapsed_s(cluster: AnyCluster, steps: int, step_s: float,
              averagings: Sequence[tuple[int, int] | tuple[int, int, float]],
              model_bytes: float) -> float:
  """Modeled wall clock of a run so far: `steps` local steps of `step_s`
  compute seconds each, then for each level `(group size, averagings so
  far[, bytes per averaging])` that many all-reduces of those bytes
  (default `model_bytes`; a fragmented level's events carry a fragment)
  among its groups, not overlapped with compute (as `predict` without
  delays). From a run's own counters, so periods that changed during
  training (`hier.period_schedule`) count as they ran."""
  require(steps >= 0 and step_s >= 0 and model_bytes >= 0,
          f'steps={steps}, step_s={step_s} and model_bytes={model_bytes} '
          'must be >= 0.')
  total = steps * step_s
  for size, events, *nbytes in averagings:
    total += events * allreduce_s(cluster, size,
                                  nbytes[0] if nbytes else model_bytes)
  return total


def epoch_table(
    cluster: AnyCluster, learners: Sequence[int],
    algorithms: Sequence[Algorithm | Callable[[int], Algorithm | None]],
    model_bytes: float, step_s: float, num_examples: int, batch_size: int,
    epochs: int) -> str:
  """A Markdown table of per-epoch figures, averaged over `epochs` epochs.

  An epoch is num_examples / (P B) steps, a fraction when P B > num_examples
  (the engine refuses those: B > N / P), and an averaging period can exceed
  an epoch, so counts are taken over the whole run and divided by `epochs`.
  One column per bounded tier counts its units (nodes, pods); per-level
  figures are lists, innermost level first. An entry of `algorithms` may be
  a function of P giving the algorithm for P learners, or None for no row
  (a three-level hierarchy of pods needs more than one pod).
  """
  require(epochs >= 1 and batch_size >= 1 and num_examples >= 1,
          'epochs, batch_size and num_examples must be >= 1.')
  gb = 1e9
  units = unit_devices(cluster)[:len(cluster.tiers) - 1]
  unit_columns = ''.join(f'{unit_name(cluster, i)}s | '
                         for i in range(len(units)))
  rows = [f'| P | {unit_columns}steps/epoch | algorithm | avg/epoch per level '
          '| GB/learner/epoch per level | comm s/epoch per level | '
          'comm s/epoch | total s/epoch | speedup vs sync |',
          '|' + '---|' * (9 + len(units))]

  def each_level(values, fmt):
    return ' / '.join(format(v / epochs, fmt) for v in values)

  for p in learners:
    steps = round(num_examples / (p * batch_size) * epochs)
    counts = ''.join(f'{-(-p // devices)} | ' for devices in units)
    for entry in algorithms:
      algorithm = entry if isinstance(entry, Algorithm) else entry(p)
      if algorithm is None:
        continue
      r = predict(cluster, algorithm, p, steps, model_bytes, step_s)
      rows.append(
          f'| {p} | {counts}{steps / epochs:.2f} | {algorithm.label} | '
          f'{each_level([l.events for l in r.levels], ".2f")} | '
          f'{each_level([l.bytes_per_learner / gb for l in r.levels], ".3g")} '
          f'| {each_level([l.comm_s for l in r.levels], ".3g")} | '
          f'{r.comm_s / epochs:.3g} | {r.total_s / epochs:.3g} | '
          f'{r.speedup_vs_sync:.2f} |')
  return '\n'.join(rows)


def step_table(cluster: AnyCluster, num_learners: int,
               algorithms: Sequence[Algorithm], model_bytes: float,
               step_s: float, steps: int) -> str:
  """A Markdown table of per-step figures over `steps` local steps (a
  whole number of outermost periods, so every level's events count):
  the peak payload of one averaging event and the communication per step
  of each level (innermost first), what of it the learners wait for, the
  step time, and how much of each level's communication its delay
  hides ('no', 'partly', 'fully')."""
  rows = ['| algorithm | MB per event per level | comm ms/step per level | '
          'exposed comm ms/step | step ms | speedup vs sync | hidden per '
          'level |', '|---|---|---|---|---|---|---|']
  for algorithm in algorithms:
    r = predict(cluster, algorithm, num_learners, steps, model_bytes, step_s)
    per_step = lambda seconds: 1e3 * seconds / steps
    rows.append(
        f'| {algorithm.label} | '
        f'{" / ".join(f"{l.event_bytes / 1e6:.3g}" for l in r.levels)} | '
        f'{" / ".join(f"{per_step(l.comm_s):.3g}" for l in r.levels)} | '
        f'{per_step(r.exposed_s):.3g} | {per_step(r.total_s):.4g} | '
        f'{r.speedup_vs_sync:.2f} | '
        f'{" / ".join(_hidden(l) for l in r.levels)} |')
  return '\n'.join(rows)


def _hidden(level: LevelPrediction) -> str:
  """How much of a level's communication runs during compute."""
  if not level.hidden_s:
    return 'no'
  return 'fully' if level.exposed_s <= 1e-12 * level.comm_s else 'partly'


def hides(level: LevelPrediction) -> bool:
  """Whether all of a level's communication runs during compute."""
  return _hidden(level) == 'fully'
