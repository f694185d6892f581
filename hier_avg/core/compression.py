"""Compressed averaging: what a level sends instead of float32 weights.

`hier.compress` picks, per level, how a learner's *change since its group's
last common model* (the anchor) travels: `none` (float32 weights, an
all-reduce: today's averaging, bit for bit), `bfloat16`, or `int8`
(blockwise absmax: blocks of `INT8_BLOCK` consecutive values share one
float32 scale, `max |x| / 127`, and each value is `round(x / scale)`).
The group's new model is

    mean = anchor + mean_j D(Q(x_j - anchor))

with Q the compression and D its float32 reading. Compressed payloads cannot
be summed in their own dtype (int8 overflows, bfloat16 sums lose the small
changes), so a level all-gathers its learners' payloads and every device
takes the mean of what it received in float32: per event each device
receives the payloads of its group's other learners, `(n - 1) x payload`
(`cost_model.allgather_s` prices it). Across nodes of one learner each
(DiLoCo-style workers) int8 then moves a quarter of a float32
all-reduce's bytes over a node's link; with d learners per node all d
payloads cross it, as much at d = 4 as the all-reduce's one reduced model.

With error feedback (`hier.error_feedback`) each learner keeps what its
compression lost, `r_j = (x_j - anchor + r_j) - D(Q(x_j - anchor + r_j))`,
and sends it again next time, so over many events nothing is lost for good
(the residuals telescope: sum of what was sent + last residual = sum of the
changes).
"""

import math

import jax
import jax.numpy as jnp

COMPRESSIONS = ('none', 'bfloat16', 'int8')
# Values per int8 scale: 256 keeps the scales' overhead at 4 / 256 = 1.6 %
# of the payload, while one large value spoils only its own block.
INT8_BLOCK = 256


def quantize(x, kind: str) -> dict:
  """`x` [..., n] float32 -> the payload arrays that travel.

  bfloat16: {'values': [..., n] bfloat16}; int8: {'values': [..., n] int8,
  'scales': [..., ceil(n / INT8_BLOCK)] float32}.
  """
  if kind == 'bfloat16':
    return {'values': x.astype(jnp.bfloat16)}
  if kind == 'int8':
    blocks = _blocks(x)
    scales = jnp.max(jnp.abs(blocks), axis=-1) / 127.0
    safe = jnp.where(scales > 0, scales, 1.0)[..., None]
    values = jnp.clip(jnp.round(blocks / safe), -127, 127).astype(jnp.int8)
    return {'values': values.reshape(blocks.shape[:-2] + (-1,))[
        ..., :x.shape[-1]], 'scales': scales}
  raise ValueError(f'unknown compression {kind!r}; one of {COMPRESSIONS}.')


def dequantize(payload: dict, kind: str):
  """The float32 values a payload stands for, [..., n]."""
  values = payload['values']
  if kind == 'bfloat16':
    return values.astype(jnp.float32)
  n = values.shape[-1]
  blocks = _blocks(values.astype(jnp.float32))
  return (blocks * payload['scales'][..., None]).reshape(
      blocks.shape[:-2] + (-1,))[..., :n]


def to_wire(payload: dict) -> dict:
  """bfloat16 arrays as their uint16 bits for the collective: a backend
  without bfloat16 collectives (XLA's CPU) would otherwise widen them to
  float32 before sending, and the bytes saved would not be real."""
  return {name: (jax.lax.bitcast_convert_type(x, jnp.uint16)
                 if x.dtype == jnp.bfloat16 else x)
          for name, x in payload.items()}


def from_wire(payload: dict, kind: str) -> dict:
  """`to_wire`'s inverse."""
  if kind != 'bfloat16':
    return payload
  return {name: jax.lax.bitcast_convert_type(x, jnp.bfloat16)
          for name, x in payload.items()}


def _blocks(x):
  """[..., n] -> [..., ceil(n / INT8_BLOCK), INT8_BLOCK], zero padded."""
  n = x.shape[-1]
  pad = -n % INT8_BLOCK
  if pad:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
  return x.reshape(x.shape[:-1] + (-1, INT8_BLOCK))


def payload_bytes(n: int, kind: str) -> int:
  """Bytes of one learner's payload for `n` float32 values."""
  if kind == 'none':
    return 4 * n
  if kind == 'bfloat16':
    return 2 * n
  return n + 4 * math.ceil(n / INT8_BLOCK)


def payload_arrays(kind: str) -> int:
  """Arrays a payload has (one collective each per mesh axis)."""
  return {'none': 1, 'bfloat16': 1, 'int8': 2}[kind]


def check_levels(compress, error_feedback, depth: int) -> list[str]:
  """Problems with `hier.compress` / `hier.error_feedback` for `depth`
  levels, as lines for a UserError ([] when fine)."""
  problems = []
  for key, values in (('hier.compress', compress),
                      ('hier.error_feedback', error_feedback)):
    if values and len(values) != depth:
      problems.append(
          f'{key}={tuple(values)} has {len(values)} entries but the '
          f'hierarchy has {depth} levels; give one per level, innermost '
          'first, or leave it empty.')
  for kind in compress:
    if kind not in COMPRESSIONS:
      problems.append(f'hier.compress entry {kind!r} is not one of '
                      f'{COMPRESSIONS}.')
  kinds = tuple(compress) or ('none',) * depth
  for i, feedback in enumerate(error_feedback):
    if feedback and i < len(kinds) and kinds[i] == 'none':
      problems.append(
          f'hier.error_feedback is on for level {i} whose hier.compress is '
          "'none': there is nothing to feed back; turn it off or compress.")
  return problems


def zeros_like(tree):
  return jax.tree.map(jnp.zeros_like, tree)
