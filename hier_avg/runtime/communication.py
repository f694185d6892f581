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


def one_learner(tree, grid_ndim: int):
  """Shapes and dtypes of one learner's share of a learner-grid tree."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape[grid_ndim:], x.dtype), tree)


def counters(channels: dict[str, Channel],
             event_counts: dict[str, int]) -> dict[str, int]:
  """Cumulative events, collectives and bytes per learner of each channel.

  Keys: `<events>` (e.g. `local_averagings`), `<channel>_collectives`,
  `<channel>_bytes_per_learner`, and their sum over channels
  `bytes_averaged_per_learner`.
  """
  row = {}
  for name, channel in channels.items():
    events = event_counts[name]
    row[channel.events] = events
    row[f'{name}_collectives'] = events * channel.collectives
    row[f'{name}_bytes_per_learner'] = events * channel.bytes_per_learner
  row['bytes_averaged_per_learner'] = sum(
      row[f'{name}_bytes_per_learner'] for name in channels)
  return row
