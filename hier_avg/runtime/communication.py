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
  layout: the bytes of one learner's share, or 0 for groups of one learner.
  """
  events: str
  collectives: int
  bytes_per_learner: int
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
  `<channel>_bytes_per_learner`, and their sum over channels
  `bytes_averaged_per_learner`. A channel in fragments has these keys for
  each fragment too (`global_fragment0_averagings`, ...); its own are the
  sums.
  """
  row = {}
  for name, channel in channels.items():
    parts = {f'{name}_fragment{f}': part
             for f, part in enumerate(channel.fragments)} or {name: channel}
    total = (0, 0, 0)
    for key, part in parts.items():
      events = event_counts[key]
      cost = (events, events * part.collectives,
              events * part.bytes_per_learner)
      if channel.fragments:
        row.update(zip((part.events, f'{key}_collectives',
                        f'{key}_bytes_per_learner'), cost))
      total = tuple(a + b for a, b in zip(total, cost))
    row.update(zip((channel.events, f'{name}_collectives',
                    f'{name}_bytes_per_learner'), total))
  row['bytes_averaged_per_learner'] = sum(
      row[f'{name}_bytes_per_learner'] for name in channels)
  return row
