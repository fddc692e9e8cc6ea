"""Masked autoencoder (He et al., 2022) with a ViT encoder: `mae` in the
model registry.

The image [B, H, W, C] is cut into p x p patches, N = (H/p)(W/p) of them,
each a vector of p*p*C values (`patchify`, row-major over the patch grid).
Per example a random subset of `num_kept(N, ratio)` patches stays visible
(`random_masking`, drawn from that example's key). The encoder embeds and
runs only the visible patches (gathered, so its cost scales with their
number), with fixed 2-D sin-cos position embeddings (`sincos_2d`) and an
optional class token. The decoder embeds the encoder's tokens to its own
width, appends a learned mask token for every masked patch, restores the
patch order, adds its own sin-cos position embeddings and predicts every
patch's p*p*C values with a shallow transformer. The loss
(`vaejax.objectives.mae`) is the MSE on the masked patches only.

The family contract: `represent` is the encoder on every patch (no
masking), mean-pooled over the patch tokens or the class token;
`reconstruct` is the prediction with the visible patches pasted in;
`reconstruction_rows` draws masked input / prediction / original.
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vaejax import errors
from vaejax.data import patches as patch_lib
from vaejax.models import family


def patch_grid(image_shape, patch_size):
  """(rows, columns) of the patch grid; a clear error when p does not divide
  the image."""
  height, width, _ = image_shape
  if height % patch_size or width % patch_size:
    divisors = [p for p in range(1, min(height, width) + 1)
                if height % p == 0 and width % p == 0]
    raise errors.ConfigError(
        f'config.model.patch_size={patch_size} does not divide images of '
        f'shape {tuple(image_shape)}: use one of {divisors}.')
  return height // patch_size, width // patch_size


def sincos_1d(dim, positions):
  """[len(positions), dim]: sin(pos * w_i) then cos(pos * w_i), with
  w_i = 10000^(-i / (dim/2)), i = 0 .. dim/2 - 1 (the Transformer's)."""
  omega = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
  angles = np.asarray(positions, np.float64)[:, None] * omega[None]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim, rows, columns):
  """[rows*columns, dim] fixed position embeddings of the row-major patch
  grid: the first dim/2 values embed the column, the last dim/2 the row
  (MAE's reference code, `get_2d_sincos_pos_embed`)."""
  if dim % 4:
    raise errors.ConfigError(
        f'2-D sin-cos position embeddings need a width divisible by 4, got '
        f'{dim}: set config.model.embed_dim and config.model.decoder_dim to '
        f'multiples of 4.')
  row, column = np.meshgrid(np.arange(rows), np.arange(columns),
                            indexing='ij')
  return np.concatenate([sincos_1d(dim // 2, column.reshape(-1)),
                         sincos_1d(dim // 2, row.reshape(-1))],
                        axis=1).astype(np.float32)


def num_kept(num_patches, mask_ratio):
  """The exact number of visible patches per example: floor(N (1 - r)), as
  MAE's reference code keeps."""
  return int(num_patches * (1.0 - mask_ratio))


def random_masking(keys, num_patches, mask_ratio):
  """Per-example random masks from [B] keys.

  Returns (keep [B, K] indices of the visible patches in the order the
  encoder sees them, restore [B, N] the permutation that puts the
  decoder's [visible, masked] tokens back in patch order, mask [B, N] 1.0
  for masked patches), K = num_kept(N, ratio): exactly N - K masked each.
  """
  kept = num_kept(num_patches, mask_ratio)
  noise = jax.vmap(lambda k: jax.random.uniform(k, (num_patches,)))(keys)
  shuffle = jnp.argsort(noise, axis=1)
  restore = jnp.argsort(shuffle, axis=1)
  mask = (restore >= kept).astype(jnp.float32)
  return shuffle[:, :kept], restore, mask


def dropout(keys, h, rate):
  """h with each value zeroed with probability `rate` (a number, or an array
  broadcastable to one example's shape h.shape[1:]) and the rest scaled by
  1 / (1 - rate); example i's mask from keys[i]. The classifiers' dropout
  and, on a tensor of ones, stochastic depth's multipliers."""
  if np.ndim(rate) == 0 and not rate:
    return h
  keep = jax.vmap(
      lambda key: jax.random.bernoulli(key, 1.0 - rate, h.shape[1:]))(keys)
  return jnp.where(keep, h / (1.0 - rate), 0.0)


def drop_path_scales(keys, depth, rate):
  """Stochastic depth (Huang et al. 2016) as ViTs are fine-tuned with it
  (DeiT, MAE): [B] keys -> [B, depth, 2] multipliers of each block's
  attention and MLP branches, each 0 with probability r_i and 1 / (1 - r_i)
  otherwise (so its expectation is 1), r_i growing linearly from 0 at the
  first block to `rate` at the last; example b's drawn from keys[b]."""
  rates = jnp.linspace(0.0, rate, depth)[:, None]
  return dropout(keys, jnp.ones((keys.shape[0], depth, 2)), rates)


class TransformerBlock(nn.Module):
  """Pre-norm block: x + MHA(LN(x)), then x + MLP(LN(x)) (GELU, 4x)."""
  num_heads: int
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, x, scales: Optional[jax.Array] = None):
    """`scales` [B, 2] (`drop_path_scales`): multipliers of each example's
    attention and MLP branches; None: both 1."""
    width = x.shape[-1]
    h = nn.LayerNorm(name='norm1')(x)
    h = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, name='attention')(h, h)
    x = x + (h if scales is None else h * scales[:, 0, None, None])
    h = nn.LayerNorm(name='norm2')(x)
    h = nn.Dense(self.mlp_ratio * width, name='mlp_in')(h)
    h = nn.Dense(width, name='mlp_out')(nn.gelu(h))
    return x + (h if scales is None else h * scales[:, 1, None, None])


class ViTEncoder(nn.Module):
  """A ViT on (a subset of) the patches of an image: patch embedding plus
  fixed sin-cos positions, an optional class token (position embedding
  zero, as in MAE), pre-norm blocks, a final LayerNorm. The MAE's encoder,
  and the backbone a classifier fine-tunes (parameters under `encoder`).
  With `drop_path_rate` > 0 and keys, the blocks' branches are dropped per
  example (`drop_path_scales`; training only)."""
  image_shape: tuple
  patch_size: int
  embed_dim: int
  depth: int
  num_heads: int
  class_token: bool = False
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x, keep: Optional[jax.Array] = None,
               drop_path_keys: Optional[jax.Array] = None):
    """Tokens [B, K (+1), embed_dim] of the patches `keep` [B, K] (every
    patch when None), the class token first when there is one;
    `drop_path_keys` [B]: one key per example for stochastic depth."""
    rows, columns = patch_grid(self.image_shape, self.patch_size)
    tokens = nn.Dense(self.embed_dim, name='patch_embed')(
        patch_lib.patchify(x, self.patch_size))
    tokens = tokens + sincos_2d(self.embed_dim, rows, columns)[None]
    if keep is not None:
      tokens = jnp.take_along_axis(tokens, keep[..., None], axis=1)
    if self.class_token:
      cls = self.param('class_token', nn.initializers.normal(0.02),
                       (1, 1, self.embed_dim))
      tokens = jnp.concatenate(
          [jnp.broadcast_to(cls, (tokens.shape[0], 1, self.embed_dim)),
           tokens], axis=1)
    scales = None
    if drop_path_keys is not None and self.drop_path_rate:
      scales = drop_path_scales(drop_path_keys, self.depth,
                                self.drop_path_rate)
    for i in range(self.depth):
      tokens = TransformerBlock(self.num_heads, name=f'block{i}')(
          tokens, None if scales is None else scales[:, i])
    return nn.LayerNorm(name='norm')(tokens)


def pooled(tokens, class_token):
  """The class token, or the mean patch token: [B, T, D] -> [B, D]."""
  return tokens[:, 0] if class_token else jnp.mean(tokens, axis=1)


class MaskedAutoencoder(nn.Module):
  """ViT encoder on the visible patches and a shallow transformer decoder."""
  image_shape: tuple
  patch_size: int
  embed_dim: int
  depth: int
  num_heads: int
  decoder_dim: int
  decoder_depth: int
  decoder_heads: int
  mask_ratio: float = 0.75
  # The decoder predicts each patch normalised by its own mean and standard
  # deviation (`normalized_patches`; MAE's norm_pix_loss).
  norm_pix_loss: bool = False
  class_token: bool = False

  def setup(self):
    rows, columns = patch_grid(self.image_shape, self.patch_size)
    self.num_patches = rows * columns
    self.decoder_position = sincos_2d(self.decoder_dim, rows, columns)
    self.encoder = ViTEncoder(self.image_shape, self.patch_size,
                              self.embed_dim, self.depth, self.num_heads,
                              self.class_token)
    self.decoder_embed = nn.Dense(self.decoder_dim)
    self.mask_token = self.param('mask_token', nn.initializers.normal(0.02),
                                 (1, 1, self.decoder_dim))
    self.decoder_blocks = [TransformerBlock(self.decoder_heads)
                           for _ in range(self.decoder_depth)]
    self.decoder_norm = nn.LayerNorm()
    self.predict = nn.Dense(self.patch_size ** 2 * self.image_shape[-1])

  def encode(self, x, keep: Optional[jax.Array] = None):
    """The encoder's tokens of the patches `keep` (every one when None)."""
    return self.encoder(x, keep)

  def decode(self, tokens, restore: Optional[jax.Array] = None):
    """Predicted patches [B, N, p*p*C] from encoder tokens of the visible
    patches; `restore` [B, N] puts [visible, mask tokens] in patch order
    (None: the tokens are of every patch, in order)."""
    h = self.decoder_embed(tokens)
    if self.class_token:
      cls, h = h[:, :1], h[:, 1:]
    batch, visible, _ = h.shape
    if restore is not None:
      masked = jnp.broadcast_to(
          self.mask_token, (batch, self.num_patches - visible,
                            self.decoder_dim))
      h = jnp.take_along_axis(jnp.concatenate([h, masked], axis=1),
                              restore[..., None], axis=1)
    h = h + self.decoder_position[None]
    if self.class_token:
      h = jnp.concatenate([cls, h], axis=1)
    for block in self.decoder_blocks:
      h = block(h)
    prediction = self.predict(self.decoder_norm(h))
    return prediction[:, 1:] if self.class_token else prediction

  def represent(self, x):
    """The unmasked encoder's class token, or its mean patch token."""
    return pooled(self.encode(x), self.class_token)

  def masked(self, x, keys):
    """(predicted patches [B, N, p*p*C], mask [B, N]) with the patches
    masked by `random_masking` from the per-example `keys`."""
    keep, restore, mask = random_masking(keys, self.num_patches,
                                         self.mask_ratio)
    return self.decode(self.encode(x, keep), restore), mask

  def __call__(self, x, keep=None, restore=None):
    return self.decode(self.encode(x, keep), restore)


class MAEFamily(family.Family):
  """The contract for a masked autoencoder (the likelihood only shows its
  predictions as images: the identity mean of a Gaussian)."""
  LACKING = {
      'code_grid': 'a masked autoencoder has no discrete codes',
      'decode_code_grid': 'a masked autoencoder has no discrete codes',
      'code_log_prob': 'a masked autoencoder has no prior',
      'reconstruction_nll': 'a masked autoencoder defines no likelihood',
      'sample': 'a masked autoencoder has no prior to sample from',
      'log_likelihood_bound': 'a masked autoencoder defines no p(x)',
      'encode': 'a masked autoencoder has no single continuous code to '
                'interpolate (its features are per-patch tokens)',
      'decode': 'a masked autoencoder decodes tokens of patches, not a code',
      'posterior_kl_per_dim': 'a masked autoencoder has no posterior',
      'prior_grid': 'a masked autoencoder has no prior',
      'assign_clusters': 'a masked autoencoder is not a mixture model',
      'positive_probability': 'a masked autoencoder is not a classifier',
      'classify': 'a masked autoencoder is not a classifier (its encoder '
                  'is fine-tuned as one)',
  }

  def represent(self, variables, x):
    return self.model.apply(variables, x, method=self.model.represent)

  def _masked_prediction(self, variables, x, keys):
    """(patches of x, predicted patches in pixel space, mask [B, N])."""
    prediction, mask = self.model.apply(variables, x, keys,
                                        method=self.model.masked)
    patches = patch_lib.patchify(x, self.model.patch_size)
    if self.model.norm_pix_loss:
      # Shown in pixel space with the true patch's mean and scale (as
      # MAE's visualisation does).
      _, (mean, std) = patch_lib.normalized_patches(patches)
      prediction = prediction * std + mean
    return patches, prediction, mask

  def _image(self, patches):
    return patch_lib.unpatchify(patches, self.model.patch_size,
                                self.model.image_shape)

  def reconstruct(self, variables, x, keys):
    """The prediction of the masked patches with the visible ones pasted."""
    patches, prediction, mask = self._masked_prediction(variables, x, keys)
    pasted = jnp.where(mask[..., None] > 0, prediction, patches)
    return self._image(pasted)

  def reconstruction_rows(self, variables, x, keys):
    patches, prediction, mask = self._masked_prediction(variables, x, keys)
    # Masked patches shown at mid-grey.
    masked_input = jnp.where(mask[..., None] > 0, 0.5, patches)
    pasted = jnp.where(mask[..., None] > 0, prediction, patches)
    return {'masked input': self._image(masked_input),
            'prediction, visible pasted': jnp.clip(self._image(pasted),
                                                   0.0, 1.0),
            'original': x}


def mae(config, image_shape, likelihood):
  patch_grid(image_shape, config.patch_size)
  for width, heads, name in ((config.embed_dim, config.num_heads, 'num_heads'),
                             (config.decoder_dim, config.decoder_heads,
                              'decoder_heads')):
    if width % heads:
      raise errors.ConfigError(
          f'config.model.{name}={heads} does not divide the width {width} '
          f'of its transformer: choose a divisor.')
  rows, columns = patch_grid(image_shape, config.patch_size)
  if num_kept(rows * columns, config.mask_ratio) < 1:
    raise errors.ConfigError(
        f'config.model.mask_ratio={config.mask_ratio} leaves no visible patch '
        f'of the {rows * columns}; lower it.')
  model = MaskedAutoencoder(
      image_shape=tuple(image_shape), patch_size=config.patch_size,
      embed_dim=config.embed_dim, depth=config.depth,
      num_heads=config.num_heads, decoder_dim=config.decoder_dim,
      decoder_depth=config.decoder_depth, decoder_heads=config.decoder_heads,
      mask_ratio=config.mask_ratio, norm_pix_loss=config.norm_pix_loss,
      class_token=config.class_token)
  return MAEFamily(model, likelihood, 'mae')
