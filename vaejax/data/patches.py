"""Images as sequences of patches (masked autoencoders, ViTs).

`patchify` cuts [B, H, W, C] images into p x p patches in row-major grid
order; `unpatchify` inverts it; `normalized_patches` is MAE's per-patch
normalised target.
"""
import jax.numpy as jnp


def patchify(x, patch_size):
  """[B, H, W, C] -> [B, N, p*p*C], patches in row-major grid order, each
  patch's values in (row, column, channel) order."""
  batch, height, width, channels = x.shape
  p = patch_size
  x = x.reshape(batch, height // p, p, width // p, p, channels)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(batch, (height // p) * (width // p), p * p * channels)


def unpatchify(patches, patch_size, image_shape):
  """The inverse of `patchify`: [B, N, p*p*C] -> [B, H, W, C]."""
  height, width, channels = image_shape
  p = patch_size
  batch = patches.shape[0]
  x = patches.reshape(batch, height // p, width // p, p, p, channels)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(batch, height, width, channels)


def normalized_patches(patches, eps=1e-6):
  """Each patch minus its mean, over its standard deviation (MAE's
  `norm_pix_loss` target), and the (mean, std) that undo it."""
  mean = jnp.mean(patches, axis=-1, keepdims=True)
  var = jnp.var(patches, axis=-1, keepdims=True)
  std = jnp.sqrt(var + eps)
  return (patches - mean) / std, (mean, std)
