"""On-device image transforms: uint8 images -> float model inputs.

Each transform takes one PRNG key per example, so the same example gets the
same randomness whatever the batch size or device count. Training draws
fresh keys every step (dynamic binarisation resamples every time a batch is
drawn); evaluation uses keys from a fixed seed, so the test set is binarised
(or dequantised) once and the same way every time.

`nats_per_dim` is what converts the model's -log p(inputs) into a code length
for the original 8-bit data: 0 for discrete inputs, log 256 for uniform
dequantisation to [0, 1) (the density over [0, 1) is 256^D times larger than
the probability of the integer pixel values).
"""
import dataclasses
import math
from typing import Callable

import jax
import jax.extend.random  # pylint: disable=unused-import
import jax.numpy as jnp

from vaejax import registry


@dataclasses.dataclass(frozen=True)
class Transform:
  name: str
  apply: Callable[[jax.Array, jax.Array], jax.Array]  # (keys [B], uint8) -> f32
  nats_per_dim: float
  description: str


def _per_example(fn):
  return jax.vmap(fn)


def uniform_uint16(key, num):
  """`num` independent uniform integers in [0, 65536) from one key.

  `jax.random.bits` spends a whole threefry block (64 random bits) on each
  32-bit word it returns; here every block gives four 16-bit numbers, so an
  image costs a quarter of the hashing. Keys of another PRNG implementation
  fall back to `jax.random.bits`.
  """
  num_words = (num + 1) // 2
  if jax.random.key_impl(key) == 'threefry2x32':
    words = jax.extend.random.threefry_2x32(
        jax.random.key_data(key), jnp.arange(num_words, dtype=jnp.uint32))
  else:
    words = jax.random.bits(key, (num_words,), jnp.uint32)
  halves = jnp.stack([words >> 16, words & 0xFFFF], axis=-1)
  return halves.reshape(-1)[:num]


def dynamic_binarize(keys, images):
  """x ~ Bernoulli(pixel / 255), independently per pixel and example.

  The pixel is compared with a 16-bit uniform integer: P(x = 1) =
  round(pixel * 65536 / 255) / 65536, within 2^-17 of pixel / 255 and exactly
  0 and 1 at the ends. 16 bits are ample for 8-bit probabilities and make the
  random numbers, the costliest part of a small model's step on a CPU, four
  times cheaper than `jax.random.bernoulli` (see `uniform_uint16`).
  """
  pixels = images.astype(jnp.uint32)
  thresholds = (pixels * 65536 + 127) // 255

  def one_example(key, example_thresholds):
    uniform = uniform_uint16(key, example_thresholds.size)
    return (uniform.reshape(example_thresholds.shape)
            < example_thresholds).astype(jnp.float32)

  return _per_example(one_example)(keys, thresholds)


def threshold_binarize(keys, images):
  """x = 1[pixel > 127]: the deterministic (static) binarisation."""
  del keys
  return (images > 127).astype(jnp.float32)


def scale(keys, images):
  """x = pixel / 255 in [0, 1]; also the bin centres of a 256-bin likelihood."""
  del keys
  return images.astype(jnp.float32) / 255.0


def features(keys, images):
  """x = the feature vectors of a first stage (`config.data.features`), as is."""
  del keys
  return images.astype(jnp.float32)


def dequantize(keys, images):
  """x = (pixel + u) / 256 with u ~ U[0, 1): continuous data in [0, 1)."""
  noise = _per_example(
      lambda k, im: jax.random.uniform(k, im.shape))(keys, images)
  return (images.astype(jnp.float32) + noise) / 256.0


TRANSFORMS = registry.Registry('data transform', {
    'dynamic_binarize': Transform(
        'dynamic_binarize', dynamic_binarize, 0.0,
        'binary x ~ Bernoulli(pixel/255), resampled every step'),
    'threshold_binarize': Transform(
        'threshold_binarize', threshold_binarize, 0.0,
        'binary x = pixel > 127'),
    'scale': Transform('scale', scale, 0.0, 'x = pixel/255'),
    'dequantize': Transform(
        'dequantize', dequantize, math.log(256.0),
        'x = (pixel + U[0,1))/256'),
    'features': Transform(
        'features', features, 0.0,
        'float32 features of a first stage (config.data.features), as is'),
}, 'config.data.transform')


def get_transform(name):
  return TRANSFORMS.get(name)


def bits_per_dim(nats_per_example, num_dims, transform):
  """-log p in nats per example -> bits per dimension of the 8-bit data."""
  return (nats_per_example + num_dims * transform.nats_per_dim) / (
      num_dims * math.log(2.0))
