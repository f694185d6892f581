"""What an algorithm's communication costs: per channel, per event, in all.

A channel is one kind of communication event of an algorithm: each level of
Hier-AVG's averaging ('local', 'global'), or simulated ASGD's per-step
gradient exchange. The algorithm says what one event of each channel costs
(`Channel`) and how many events happened in a number of steps; the run's
cumulative counters in `metrics.jsonl` and `summary.json` come from
`counters`, one formula for every algorithm.
"""

import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class Channel:
  """One kind of communication event and what one event costs.

  `events` names the event count in the metrics (e.g. 'local_averagings').
  `collectives` is what this layout issues per device per event: one
  collective per dtype, or none when a whole group lives on one device.
  `bytes_per_learner` is the algorithm's payload per event, whatever the
  layout: the bytes of one learner's share, or 0 for groups of one learner;
  `between_hosts_bytes_per_learner` the part of it that crosses between
  hosts (the rest stays inside a host): all of it for a level whose groups
  span nodes, none for a level inside a node, and for a compressed level
  that spans nodes its inner groups' one compressed payload, shared by
  their learners (their float32 reduction stays inside).
  """
  events: str
  collectives: int
  bytes_per_learner: float
  between_hosts_bytes_per_learner: float = 0
  # A level averaged in fragments (`hier.fragments`): each fragment's
  # event, counted apart (`<channel>_fragment<f>`); the level's own
  # counters are their sums, and its two fields above are unused.
  fragments: tuple['Channel', ...] = ()


def one_learner(tree, grid_ndim: int):
  """Shapes and dtypes of one learner's share of a learner-grid tree."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape[grid_ndim:], x.dtype), tree)


def counters(channels: dict[str, Channel],
             event_counts: dict[str, int]) -> dict[str, int]:
  """Cumulative events, collectives and bytes per learner of each channel.

  Keys: `<events>` (e.g. `local_averagings`), `<channel>_collectives`,
  `<channel>_bytes_per_learner` and of those `<channel>_bytes_between_
  hosts_per_learner` and `<channel>_bytes_inside_hosts_per_learner`, and
  their sums over channels `bytes_averaged_per_learner`,
  `bytes_between_hosts_per_learner` and `bytes_inside_hosts_per_learner`.
  A channel in fragments has these keys for each fragment too
  (`global_fragment0_averagings`, ...); its own are the sums.
  """
  row = {}
  for name, channel in channels.items():
    parts = {f'{name}_fragment{f}': part
             for f, part in enumerate(channel.fragments)} or {name: channel}
    total = (0, 0, 0, 0)
    for key, part in parts.items():
      events = event_counts[key]
      between = events * part.between_hosts_bytes_per_learner
      cost = (events, events * part.collectives,
              events * part.bytes_per_learner, between)
      if channel.fragments:
        row.update(_costs(part.events, key, cost))
      total = tuple(a + b for a, b in zip(total, cost))
    row.update(_costs(channel.events, name, total))
  for kind in ('', 'between_hosts_', 'inside_hosts_'):
    row[f'bytes_{kind or "averaged_"}per_learner'] = sum(
        row[f'{name}_bytes_{kind}per_learner'] for name in channels)
  return row


def _costs(events_key: str, name: str, cost) -> dict:
  """The counters of `name` from (events, collectives, bytes, bytes
  between hosts); bytes as whole numbers (a shared payload's share of a
  learner may be fractional per event)."""
  events, collectives, nbytes, between = cost
  return {events_key: events, f'{name}_collectives': collectives,
          f'{name}_bytes_per_learner': round(nbytes),
          f'{name}_bytes_between_hosts_per_learner': round(between),
          f'{name}_bytes_inside_hosts_per_learner': round(nbytes) -
          round(between)}
