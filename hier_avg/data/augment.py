"""On-device input processing: pad-4 random crop, horizontal flip, normalize.

Runs inside the compiled train step on uint8 images gathered from the data
set resident on the device, so the host never feeds pixels during training.
"""

import jax
import jax.numpy as jnp

PAD = 4


def normalize(images_BxHxWxC, mean_C, std_C):
  """uint8 pixels -> float32, zero mean and unit variance per channel."""
  return (images_BxHxWxC.astype(jnp.float32) / 255.0 - mean_C) / std_C


def crop_and_flip(images_BxHxWxC, key):
  """Random crop after zero-padding by 4 pixels, then a random h-flip."""
  b, h, w, c = images_BxHxWxC.shape
  crop_key, flip_key = jax.random.split(key)
  padded = jnp.pad(images_BxHxWxC, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
  offsets_Bx2 = jax.random.randint(crop_key, (b, 2), 0, 2 * PAD + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

  cropped = jax.vmap(crop)(padded, offsets_Bx2)
  flip_B = jax.random.bernoulli(flip_key, 0.5, (b,))
  return jnp.where(flip_B[:, None, None, None], cropped[:, :, ::-1], cropped)


def preprocess(images_BxHxWxC, key, mean_C, std_C, augment: bool):
  if augment:
    images_BxHxWxC = crop_and_flip(images_BxHxWxC, key)
  return normalize(images_BxHxWxC, mean_C, std_C)
