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


def dynamic_binarize(keys, images):
  """x ~ Bernoulli(pixel / 255), independently per pixel and example."""
  probs = images.astype(jnp.float32) / 255.0
  return _per_example(
      lambda k, p: jax.random.bernoulli(k, p).astype(jnp.float32))(keys, probs)


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
