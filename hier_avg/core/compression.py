"""Compressed averaging: what a level sends instead of float32 weights.

`hier.compress` picks, per level, how the *change since the group's last
common model* (the anchor) travels: `none` (float32 weights, an
all-reduce: today's averaging, bit for bit), `bfloat16`, or a blockwise
integer kind (`BLOCKWISE`): `int8` and `int4`, absmax per block (blocks of
consecutive values share one float32 scale, `max |x| / q`, and each value
is `round(x / scale)` in [-q, q]; int4's values travel packed two to a
byte). A level compresses once per inner group (the learners of the level one
in, on one host; single learners at the innermost): with g_i the float32
mean of inner group i, the group's new model is

    mean = anchor + D(Q(mean_i D(Q(g_i - anchor))))

with Q the compression and D its float32 reading. Compressed payloads cannot
be summed in their own dtype (int8 overflows, bfloat16 sums lose the small
changes), so the exchange between the inner groups is a compressed
reduce-scatter (an all-to-all of compressed shards, each device averaging
its shard of every group in float32) and a compressed all-gather of the
means (`averaging.average_compressed`): a node sends and receives about
two compressed payloads of its model per event, however many learners it
holds, where a float32 ring all-reduce moves about two float32 models
(`cost_model.compressed_allreduce_s` prices it).

With error feedback (`hier.error_feedback`) each inner group keeps what its
compression lost, `r_i = (g_i - anchor + r_i) - D(Q(g_i - anchor + r_i))`,
and sends it again next time (the second compression, of the mean, keeps
no residual), so over many events nothing is lost for good
(the residuals telescope: sum of what was sent + last residual = sum of the
changes).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Blockwise:
  """A blockwise absmax integer kind: `block` values share a scale, each
  value is an integer in [-levels, levels], stored in `bits` bits."""
  bits: int
  block: int

  @property
  def levels(self) -> int:
    return 2 ** (self.bits - 1) - 1

  def payload_bytes(self, n: int) -> int:
    return math.ceil(n * self.bits / 8) + 4 * math.ceil(n / self.block)


# 256 values per int8 scale keeps the scales at 4 / 256 = 1.6 % of the
# payload while one large value spoils only its own block. At 4 bits a
# large value rounds more of its block to zero, so int4 blocks are 64
# values (scales 4 / 32 = 12.5 % of the packed values).
BLOCKWISE = {'int8': Blockwise(8, 256), 'int4': Blockwise(4, 64)}
COMPRESSIONS = ('none', 'bfloat16') + tuple(BLOCKWISE)


def quantize(x, kind: str) -> dict:
  """`x` [..., n] float32 -> the payload arrays that travel.

  bfloat16: {'values': [..., n] bfloat16}; a blockwise kind: {'values':
  [..., n] int8 (int4: [..., ceil(n / 2)] uint8, two values a byte),
  'scales': [..., ceil(n / block)] float32}.
  """
  if kind == 'bfloat16':
    return {'values': x.astype(jnp.bfloat16)}
  if kind not in BLOCKWISE:
    raise ValueError(f'unknown compression {kind!r}; one of {COMPRESSIONS}.')
  spec = BLOCKWISE[kind]
  blocks = _blocks(x, spec.block)
  scales = jnp.max(jnp.abs(blocks), axis=-1) / spec.levels
  safe = jnp.where(scales > 0, scales, 1.0)[..., None]
  values = jnp.clip(jnp.round(blocks / safe), -spec.levels,
                    spec.levels).astype(jnp.int8)
  values = values.reshape(blocks.shape[:-2] + (-1,))[..., :x.shape[-1]]
  if spec.bits == 4:
    values = _pack_nibbles(values)
  return {'values': values, 'scales': scales}


def dequantize(payload: dict, kind: str, n: int):
  """The float32 values [..., n] a payload of `n` values stands for."""
  values = payload['values']
  if kind == 'bfloat16':
    return values.astype(jnp.float32)
  spec = BLOCKWISE[kind]
  if spec.bits == 4:
    values = _unpack_nibbles(values, n)
  blocks = _blocks(values.astype(jnp.float32), spec.block)
  return (blocks * payload['scales'][..., None]).reshape(
      blocks.shape[:-2] + (-1,))[..., :n]


def _pack_nibbles(values):
  """int8 [..., n] in [-7, 7] -> uint8 [..., ceil(n / 2)]: value 2i in
  the low four bits of byte i, value 2i + 1 in the high, each stored
  offset by 8 (as 1..15)."""
  if values.shape[-1] % 2:
    values = jnp.pad(values, [(0, 0)] * (values.ndim - 1) + [(0, 1)])
  nibbles = (values.astype(jnp.int32) + 8).astype(jnp.uint8)
  pairs = nibbles.reshape(nibbles.shape[:-1] + (-1, 2))
  return pairs[..., 0] | (pairs[..., 1] << 4)


def _unpack_nibbles(packed, n: int):
  """`_pack_nibbles`' inverse: int8 [..., n]."""
  low = (packed & 0xF).astype(jnp.int32) - 8
  high = (packed >> 4).astype(jnp.int32) - 8
  values = jnp.stack([low, high], axis=-1).reshape(packed.shape[:-1] + (-1,))
  return values[..., :n].astype(jnp.int8)


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


def _blocks(x, block: int):
  """[..., n] -> [..., ceil(n / block), block], zero padded."""
  n = x.shape[-1]
  pad = -n % block
  if pad:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
  return x.reshape(x.shape[:-1] + (-1, block))


def payload_bytes(n: int, kind: str) -> int:
  """Bytes of one learner's payload for `n` float32 values."""
  if kind == 'none':
    return 4 * n
  if kind == 'bfloat16':
    return 2 * n
  return BLOCKWISE[kind].payload_bytes(n)


def block_size(kind: str) -> int:
  """Values per scale (1: each value alone)."""
  return BLOCKWISE[kind].block if kind in BLOCKWISE else 1


def payload_arrays(kind: str) -> int:
  """Arrays a payload has (one collective each per mesh axis)."""
  return 2 if kind in BLOCKWISE else 1


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
