"""Training-time image augmentations, drawn on device from per-example keys.

Like the data transforms and corruptions, example i is augmented from key i
alone, so an augmented batch is the same whatever the batch size or the
number of devices it is split over.
"""
import jax
import jax.numpy as jnp
from jax import lax


def random_crop_and_flip(keys, x, pad, flip=True):
  """Each image shifted by a random crop of its zero-padded copy, and
  mirrored left-right with probability 1/2 (when `flip`).

  Args:
    keys: [B] PRNG keys, one per example.
    x: [B, H, W, C] images (any float range; the padding is 0).
    pad: the crop's offset is uniform in {0, ..., 2 * pad} on each axis of the
      image padded by `pad` on every side (pad = 0: no shift).
    flip: whether to mirror half of the images.

  Returns:
    [B, H, W, C] augmented images.
  """
  height, width = x.shape[1:3]

  def one_example(key, image):
    shift_key, flip_key = jax.random.split(key)
    if pad:
      padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
      offsets = jax.random.randint(shift_key, (2,), 0, 2 * pad + 1)
      image = lax.dynamic_slice(padded, (offsets[0], offsets[1], 0),
                                (height, width, image.shape[-1]))
    if flip:
      image = jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image)
    return image

  return jax.vmap(one_example)(keys, x)
