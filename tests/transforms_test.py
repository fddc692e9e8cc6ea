"""The on-device input transforms (vaejax/data/transforms.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaejax.data import transforms


def keys_for(num, seed=0):
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
      jax.random.key(seed), jnp.arange(num))


def test_dynamic_binarize_frequencies_match_pixel_over_255():
  # Every pixel value 0..255, three times per example, in 4096 examples.
  num = 4096
  images = jnp.tile(jnp.arange(256, dtype=jnp.uint8)[None, None, :],
                    (num, 3, 1))
  x = np.asarray(transforms.dynamic_binarize(keys_for(num), images))
  assert x.shape == images.shape and x.dtype == np.float32
  assert set(np.unique(x)) <= {0.0, 1.0}
  frequency = x.mean(axis=(0, 1))
  p = np.arange(256) / 255
  # The ends are exact.
  assert frequency[0] == 0.0 and frequency[255] == 1.0
  # 254 binomial proportions of 3 * 4096 draws: all within 4.5 sigma (the
  # chance that any one is outside by luck is below 1e-3).
  sigma = np.sqrt(p * (1 - p) / (3 * num))
  z = (frequency[1:-1] - p[1:-1]) / sigma[1:-1]
  assert np.abs(z).max() < 4.5, np.abs(z).max()
  # Not too close either: the draws are random, not a fixed pattern.
  assert 0.5 < np.std(z) < 1.5


def test_dynamic_binarize_pixels_are_uncorrelated():
  # Pixels 2j and 2j+1 come from the two halves of one 32-bit word, pixels j
  # and j + 392 from the two words of one threefry block.
  num = 20_000
  images = jnp.full((num, 28, 28), 128, jnp.uint8)
  x = np.asarray(transforms.dynamic_binarize(keys_for(num, seed=3), images))
  x = x.reshape(num, 784)
  bound = 5 / np.sqrt(num)
  for i, j in ((0, 1), (100, 101), (0, 392), (391, 783), (5, 6)):
    corr = np.corrcoef(x[:, i], x[:, j])[0, 1]
    assert abs(corr) < bound, (i, j, corr)
  # Different examples (keys) are uncorrelated too.
  assert abs(np.corrcoef(x[:-1, 10], x[1:, 10])[0, 1]) < bound


def test_dynamic_binarize_depends_only_on_each_examples_key():
  images = jnp.asarray(
      np.random.default_rng(0).integers(0, 256, (8, 28, 28), np.uint8))
  keys = keys_for(8)
  batch = np.asarray(transforms.dynamic_binarize(keys, images))
  again = np.asarray(transforms.dynamic_binarize(keys, images))
  np.testing.assert_array_equal(batch, again)
  # Example 5 alone gives the same image as inside the batch.
  alone = np.asarray(transforms.dynamic_binarize(keys[5:6], images[5:6]))
  np.testing.assert_array_equal(alone[0], batch[5])
  # Another key, another draw.
  other = np.asarray(transforms.dynamic_binarize(keys_for(8, seed=1), images))
  assert (other != batch).mean() > 0.05


@pytest.mark.parametrize('impl', ['threefry2x32', 'rbg'])
def test_uniform_uint16_is_uniform_on_0_65535(impl):
  key = jax.random.key(0, impl=impl)
  u = np.asarray(transforms.uniform_uint16(key, 200_001))
  assert u.shape == (200_001,)
  assert u.min() >= 0 and u.max() <= 65535
  # Mean and variance of the discrete uniform on 0..65535.
  n = 65536
  assert abs(u.mean() - (n - 1) / 2) < 5 * np.sqrt((n**2 - 1) / 12 / u.size)
  counts = np.bincount(u >> 12, minlength=16)  # 16 equal bins
  expected = u.size / 16
  chi2 = ((counts - expected) ** 2 / expected).sum()
  assert chi2 < 40  # 15 degrees of freedom: P(chi2 > 40) < 1e-3


def test_threshold_binarize_and_scale():
  images = jnp.asarray([[0, 127, 128, 255]], jnp.uint8)
  np.testing.assert_array_equal(
      transforms.threshold_binarize(None, images), [[0, 0, 1, 1]])
  np.testing.assert_allclose(transforms.scale(None, images),
                             [[0, 127 / 255, 128 / 255, 1]])
