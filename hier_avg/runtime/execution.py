"""How a device runs its block of learners and a round's steps, fast.

Three choices, each 'auto' by default and settable in the config:

* `mesh.pack` -- the learners of one device's block run either as one
  `jax.vmap` ('vmap') or as an unrolled loop of independent per-learner
  programs ('unroll').
* `model.conv` -- convolutions as XLA's own kernel ('xla') or as im2col + a
  matmul ('im2col'), which turns a vmapped convolution into a batched matmul
  instead of a slow grouped convolution.
* `mesh.round_loop` -- a round's K steps as `lax.scan` ('scan') or unrolled
  straight-line code ('unroll').

'auto' picks what was measured fastest (benchmarks/README.md): on CPU,
unrolled learners with XLA convolutions in unrolled rounds; on accelerators,
vmapped learners with im2col convolutions (when a device holds several
learners) in scanned rounds.
"""

import dataclasses

import jax
import jax.numpy as jnp

from hier_avg.errors import require
from hier_avg.models.im2col import CONVS

PACKS = ('auto', 'vmap', 'unroll')
ROUND_LOOPS = ('auto', 'scan', 'unroll')
CONV_CHOICES = ('auto',) + CONVS


def resolve_pack(pack: str, platform: str) -> str:
  """'auto': 'unroll' on CPU, 'vmap' elsewhere.

  XLA:CPU runs independent per-learner programs side by side on its
  threads; 8 learners x 32 images of cnn_small ran 1,147 images/s unrolled
  against 207 vmapped (grouped convolutions) and 540 for one model at batch
  256. A GPU runs one kernel at a time, so there the learners must share
  large kernels: vmap.
  """
  require(pack in PACKS, f'mesh.pack={pack!r} must be one of {PACKS}.')
  if pack == 'auto':
    return 'unroll' if platform == 'cpu' else 'vmap'
  return pack


def resolve_conv(conv: str, pack: str, learners_per_device: int) -> str:
  """'auto': im2col when vmapped learners share a device, else XLA's."""
  require(conv in CONV_CHOICES, f'model.conv={conv!r} must be one of '
          f'{CONV_CHOICES}.')
  if conv == 'auto':
    return 'im2col' if pack == 'vmap' and learners_per_device > 1 else 'xla'
  return conv


def resolve_round_loop(round_loop: str, platform: str) -> str:
  """'auto' unrolls on CPU and scans elsewhere.

  XLA:CPU ran convolutions inside a while loop (what `lax.scan` lowers to)
  about 30x slower than the same convolutions in straight-line code (55
  against 1,600 images/s, cnn_small on 8 fake devices), so on CPU a round is
  traced as an unrolled Python loop. Accelerators get `lax.scan`, whose
  compile time does not grow with the round's length.
  """
  require(round_loop in ROUND_LOOPS, f'mesh.round_loop={round_loop!r} must '
          f'be one of {ROUND_LOOPS}.')
  if round_loop == 'auto':
    return 'unroll' if platform == 'cpu' else 'scan'
  return round_loop


def map_learners(fn, pack: str, *trees):
  """`fn` applied to each learner: trees have one leading learner axis."""
  if pack == 'vmap':
    return jax.vmap(fn)(*trees)
  count = jax.tree.leaves(trees)[0].shape[0]
  outs = [fn(*jax.tree.map(lambda x, i=i: x[i], trees))
          for i in range(count)]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)



def map_block(fn, learner_loop: str, nblock: int, *trees):
  """`fn` applied to every learner of a device's block.

  Leaves carry the block's `nblock` learner axes first (one per grid axis);
  they are flattened into one learner axis for `map_learners` and restored
  after, so `fn` sees one learner's leaves.
  """
  block_shape = jax.tree.leaves(trees)[0].shape[:nblock]
  flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[nblock:]), trees)
  out = map_learners(fn, learner_loop, *flat)
  return jax.tree.map(lambda x: x.reshape(block_shape + x.shape[1:]), out)


@dataclasses.dataclass(frozen=True)
class Execution:
  """The resolved choices: how learners and a round's steps are compiled."""
  learner_loop: str = 'vmap'      # 'vmap' or 'unroll'
  step_loop: str = 'scan'         # 'scan' or 'unroll'
  max_unrolled_steps: int = 16    # learner-steps per device per call

  @classmethod
  def resolve(cls, learner_loop: str, step_loop: str,
              max_unrolled_steps: int, platform: str) -> 'Execution':
    """'auto' choices resolved for `platform` ('cpu', 'gpu', 'tpu')."""
    return cls(resolve_pack(learner_loop, platform),
               resolve_round_loop(step_loop, platform), max_unrolled_steps)

  def max_round_length(self, learners_per_device: int) -> int:
    """Most steps per compiled round; 0: no limit (a scanned round)."""
    if self.step_loop == 'scan':
      return 0
    # Unrolled learners multiply the program's size too.
    copies = learners_per_device if self.learner_loop == 'unroll' else 1
    return max(1, self.max_unrolled_steps // copies)
