"""On-device crop, flip and normalization."""

from absl.testing import absltest
import jax
import numpy as np

from hier_avg.data import augment


def _windows(padded, h, w):
  """Every h x w window of `padded`, and its mirror image."""
  out = []
  for i in range(padded.shape[0] - h + 1):
    for j in range(padded.shape[1] - w + 1):
      window = padded[i:i + h, j:j + w]
      out += [window, window[:, ::-1]]
  return out


class AugmentTest(absltest.TestCase):

  def test_crops_are_windows_of_the_padded_image(self):
    rng = np.random.default_rng(0)
    images = rng.integers(1, 255, (16, 6, 5, 3), dtype=np.uint8)
    out = np.asarray(augment.crop_and_flip(images, jax.random.key(3)))
    self.assertEqual(out.shape, images.shape)
    self.assertEqual(out.dtype, np.uint8)
    flips = 0
    for image, crop in zip(images, out):
      padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
      matches = [np.array_equal(crop, w) for w in _windows(padded, 6, 5)]
      self.assertTrue(any(matches))
      flips += not any(matches[0::2])
    self.assertBetween(flips, 1, 15)  # Both flipped and unflipped occur.

  def test_random_per_key_and_deterministic(self):
    images = np.random.default_rng(1).integers(0, 255, (8, 8, 8, 3),
                                                dtype=np.uint8)
    a = augment.crop_and_flip(images, jax.random.key(0))
    b = augment.crop_and_flip(images, jax.random.key(0))
    c = augment.crop_and_flip(images, jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    self.assertFalse(np.array_equal(a, c))

  def test_normalize(self):
    images = np.full((1, 2, 2, 3), 255, np.uint8)
    out = augment.normalize(images, np.array([0.5, 0.5, 0.5], np.float32),
                            np.array([0.25, 0.5, 1.0], np.float32))
    np.testing.assert_allclose(out[0, 0, 0], [2.0, 1.0, 0.5])

  def test_preprocess_without_augmentation_is_normalize(self):
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
    np.testing.assert_array_equal(
        augment.preprocess(images, jax.random.key(0), mean, std, False),
        augment.normalize(images, mean, std))


if __name__ == '__main__':
  absltest.main()
