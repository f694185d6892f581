"""How a device runs its block of learners and a round's steps, fast.

Three choices, each 'auto' by default and settable in the config:

* `runtime.learner_loop` -- the learners of one device's block run either as one
  `jax.vmap` ('vmap') or as an unrolled loop of independent per-learner
  programs ('unroll').
* `model.conv` -- convolutions as XLA's own kernel ('xla') or as im2col + a
  matmul ('im2col'), which turns a vmapped convolution into a batched matmul
  instead of a slow grouped convolution.
* `runtime.step_loop` -- a round's K steps as `lax.scan` ('scan') or unrolled
  straight-line code ('unroll').

'auto' picks what was measured fastest (benchmarks/README.md): on CPU,
unrolled learners with XLA convolutions in unrolled rounds; on accelerators,
vmapped learners with im2col convolutions (when a device holds several
learners) in scanned rounds.
"""

import dataclasses

from absl import logging
import jax
import jax.numpy as jnp

from hier_avg.models.im2col import CONVS

LEARNER_LOOPS = ('auto', 'vmap', 'unroll')
STEP_LOOPS = ('auto', 'scan', 'unroll')
CONV_CHOICES = ('auto',) + CONVS


def resolve_learner_loop(learner_loop: str, platform: str) -> str:
  """'auto': 'unroll' on CPU, 'vmap' elsewhere.

  XLA:CPU runs independent per-learner programs side by side on its
  threads; 8 learners x 32 images of cnn_small ran 1,147 images/s unrolled
  against 207 vmapped (grouped convolutions) and 540 for one model at batch
  256. A GPU runs one kernel at a time, so there the learners must share
  large kernels: vmap.
  """
  if learner_loop == 'auto':
    return 'unroll' if platform == 'cpu' else 'vmap'
  return learner_loop


# The share of a device's memory im2col's patches may take under 'auto'.
IM2COL_MEMORY_SHARE = 0.5


def resolve_conv(conv: str, learner_loop: str, learners_per_device: int,
                 patch_bytes=lambda: 0, device_bytes=lambda: 1) -> str:
  """'auto': im2col when vmapped learners share a device, else XLA's.

  Unless the patches would not fit: im2col materializes every
  convolution's k x k patches (and training keeps them all for the
  backward pass), `patch_bytes()` for a device's learners in all
  (`models.im2col.patch_bytes`); above IM2COL_MEMORY_SHARE of
  `device_bytes()` 'auto' keeps XLA's convolutions. Both are functions,
  asked only when im2col is in question.
  """
  if conv == 'auto':
    vmapped = learner_loop == 'vmap'
    if not (vmapped and learners_per_device > 1):
      return 'xla'
    need, budget = patch_bytes(), IM2COL_MEMORY_SHARE * device_bytes()
    if need <= budget:
      return 'im2col'
    logging.info('hier_avg: im2col would need %.1f GiB of patches per '
                 'device, over %.1f GiB (%g of its memory): XLA '
                 'convolutions instead', need / 2**30, budget / 2**30,
                 IM2COL_MEMORY_SHARE)
    return 'xla'
  return conv


def resolve_step_loop(step_loop: str, platform: str) -> str:
  """'auto' unrolls on CPU and scans elsewhere.

  XLA:CPU ran convolutions inside a while loop (what `lax.scan` lowers to)
  about 30x slower than the same convolutions in straight-line code (55
  against 1,600 images/s, cnn_small on 8 fake devices), so on CPU a round is
  traced as an unrolled Python loop. Accelerators get `lax.scan`, whose
  compile time does not grow with the round's length.
  """
  if step_loop == 'auto':
    return 'unroll' if platform == 'cpu' else 'scan'
  return step_loop


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
    return cls(resolve_learner_loop(learner_loop, platform),
               resolve_step_loop(step_loop, platform), max_unrolled_steps)

  def max_round_length(self, learners_per_device: int) -> int:
    """Most steps per compiled round; 0: no limit (a scanned round)."""
    if self.step_loop == 'scan':
      return 0
    # Unrolled learners multiply the program's size too.
    copies = learners_per_device if self.learner_loop == 'unroll' else 1
    return max(1, self.max_unrolled_steps // copies)
