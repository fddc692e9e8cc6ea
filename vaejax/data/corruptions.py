"""Input corruptions for denoising autoencoders, drawn on device.

Each corruption maps (keys [B], x [B, H, W, C] in [0, 1], level) to the
corrupted x of the same shape. Like the data transforms, it draws the noise
of example i from key i alone, so the corrupted batch is the same whatever
the batch size or the number of devices it is split over.

Noise is drawn on the flattened [H * W * C] image and reshaped: XLA's CPU
backend runs elementwise work on a trailing axis of size C = 1 several times
slower.
"""
import jax
import jax.numpy as jnp

from vaejax import registry


def _per_example_uniform(keys, x):
  """u ~ U[0, 1) shaped like x, example i drawn from keys[i]."""
  num_values = x[0].size
  draw = jax.vmap(lambda key: jax.random.uniform(key, (num_values,)))
  return draw(keys).reshape(x.shape)


def masking_noise(keys, x, rate):
  """Each input value is set to 0 with probability `rate` (nu)."""
  return jnp.where(_per_example_uniform(keys, x) < rate, 0.0, x)


def additive_gaussian_noise(keys, x, stddev):
  """x + sigma * eps, eps ~ N(0, I); not clipped, so the noise is exactly
  Gaussian (evaluations clip the noisy image before scoring it)."""
  num_values = x[0].size
  draw = jax.vmap(lambda key: jax.random.normal(key, (num_values,)))
  return x + stddev * draw(keys).reshape(x.shape)


def salt_and_pepper_noise(keys, x, rate):
  """A fraction `rate` of the values, chosen at random, is set to 0 or 1 with
  equal probability (Vincent et al., 2010).

  One uniform u per value decides both: u < rate / 2 -> 0 (pepper),
  rate / 2 <= u < rate -> 1 (salt), otherwise unchanged.
  """
  u = _per_example_uniform(keys, x)
  return jnp.where(u < 0.5 * rate, 0.0, jnp.where(u < rate, 1.0, x))


CORRUPTIONS = registry.Registry('corruption', {
    'masking': masking_noise,
    'gaussian': additive_gaussian_noise,
    'salt_and_pepper': salt_and_pepper_noise,
}, 'config.objective.corruption')


def get_corruption(name):
  """The corruption function named `name` (keys, x, level) -> corrupted x."""
  return CORRUPTIONS.get(name)
