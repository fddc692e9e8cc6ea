"""VQ-VAE: a conv encoder to a grid of D-dim vectors, vector quantisation,
a conv decoder (van den Oord, Vinyals, Kavukcuoglu 2017), and its family.

Encoder: stride-2 4x4 convolutions (one per `channels` entry: 28x28 -> 7x7
with two), a 3x3 convolution and residual 3x3/1x1 blocks, a 1x1
convolution to `code_dim`. Decoder: the mirror, with stride-2 transposed
convolutions, to the likelihood's parameters. The quantiser is
`vector_quantizer.VectorQuantizer`: a learned codebook (the codebook loss)
or an EMA one in non-gradient state (`objectives.vqvae`).

Alone the VQ-VAE has a uniform prior over its codes; `sample` needs a
learned prior (experiments/pixelcnn_prior.py trains one on its code grids,
and that family samples and decodes with this decoder).
"""
import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from vaejax import errors
from vaejax.models import convolutions
from vaejax.models import family
from vaejax.models import vae
from vaejax.models import vector_quantizer
from vaejax.objectives import vqvae as vqvae_objectives


class ResidualBlock(nn.Module):
  """x + 1x1(relu(3x3(relu(x)))) (the paper's residual stack)."""
  hidden: int
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    h = convolutions.conv(self.hidden, (3, 3), impl=self.conv_impl,
                          name='conv_3x3')(nn.relu(x))
    return x + convolutions.conv(x.shape[-1], (1, 1), impl=self.conv_impl,
                                 name='conv_1x1')(nn.relu(h))


class GridEncoder(nn.Module):
  """Images [B, H, W, C] -> z_e [B, H / 2^L, W / 2^L, code_dim]."""
  channels: Sequence[int]
  code_dim: int
  num_residual: int = 1
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    h = x
    for i, c in enumerate(self.channels):
      h = nn.relu(convolutions.conv(c, (4, 4), (2, 2), self.conv_impl,
                                    name=f'conv_{i}')(h))
    h = convolutions.conv(self.channels[-1], (3, 3), impl=self.conv_impl,
                          name='conv_top')(h)
    for i in range(self.num_residual):
      h = ResidualBlock(self.channels[-1] // 2, self.conv_impl,
                        name=f'residual_{i}')(h)
    return convolutions.conv(self.code_dim, (1, 1), impl=self.conv_impl,
                             name='to_code')(nn.relu(h))


class GridDecoder(nn.Module):
  """z_q [B, h, w, code_dim] -> likelihood parameters [B, H, W, C']."""
  channels: Sequence[int]  # encoder order; the decoder runs them reversed
  out_channels: int
  num_residual: int = 1
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, z):
    h = convolutions.conv(self.channels[-1], (3, 3), impl=self.conv_impl,
                          name='from_code')(z)
    for i in range(self.num_residual):
      h = ResidualBlock(self.channels[-1] // 2, self.conv_impl,
                        name=f'residual_{i}')(h)
    for i, c in enumerate(reversed(self.channels)):
      h = nn.relu(convolutions.conv_transpose(
          c, (4, 4), (2, 2), self.conv_impl, name=f'deconv_{i}')(nn.relu(h)))
    return convolutions.conv(self.out_channels, (3, 3), impl=self.conv_impl,
                             name='output')(h).astype(jnp.float32)


class VQVAE(nn.Module):
  """Encoder, quantiser and decoder; `__call__` returns every quantity the
  objective needs."""
  encoder: nn.Module
  quantizer: nn.Module
  decoder: nn.Module

  def encode(self, x):
    return self.encoder(x)

  def code_grid(self, x):
    return self.quantizer(self.encoder(x))['codes']

  def decode_codes(self, codes):
    return self.decoder(self.quantizer.embed_codes(codes))

  def __call__(self, x):
    z_e = self.encoder(x).astype(jnp.float32)
    quantized = self.quantizer(z_e)
    return dict(
        quantized, z_e=z_e, output=self.decoder(quantized['quantized']),
        codebook_loss=vector_quantizer.codebook_loss(
            z_e, quantized['codebook_vectors']),
        commitment_loss=vector_quantizer.commitment_loss(
            z_e, quantized['codebook_vectors']))


class VQVAEFamily(family.Family):
  """The contract for a VQ-VAE: code grids, their decoding, reconstructions;
  features are the code embeddings of the grid, flattened."""
  LACKING = {
      'classify': 'a VQ-VAE is not a classifier (a linear probe classifies '
                  'its code embeddings: linear_probe)',
      'sample': 'a VQ-VAE needs a learned prior over its codes to sample: '
                'train experiments/pixelcnn_prior.py on its workdir',
      'code_log_prob': 'a VQ-VAE has no learned prior over its codes (train '
                       'experiments/pixelcnn_prior.py)',
      'encode': 'the code is a discrete grid (code_grid), not a vector to '
                'interpolate',
      'decode': 'the code is a discrete grid (decode_code_grid)',
      'posterior_kl_per_dim': 'the posterior is a point mass on a code grid',
      'prior_grid': 'the prior is uniform over discrete code grids',
      'assign_clusters': 'a VQ-VAE is not a mixture model',
      'positive_probability': 'a VQ-VAE is not a classifier',
  }

  def __init__(self, model, likelihood, name, grid_shape):
    super().__init__(model, likelihood, name)
    self.grid_shape = grid_shape

  def _apply(self, variables, x, method):
    return self.model.apply(variables, x, method=method)

  def code_grid(self, variables, x):
    return self._apply(variables, x, self.model.code_grid)

  def decode_code_grid(self, variables, codes):
    return self.likelihood.mean(
        self._apply(variables, codes, self.model.decode_codes))

  def represent(self, variables, x):
    z_q = self._apply(variables, self.code_grid(variables, x),
                      lambda m, c: m.quantizer.embed_codes(c))
    return z_q.reshape(z_q.shape[0], -1)

  def reconstruct(self, variables, x, keys):
    del keys
    return self.decode_code_grid(variables, self.code_grid(variables, x))

  def reconstruction_nll(self, variables, x, keys):
    del keys
    output = self._apply(variables, self.code_grid(variables, x),
                         self.model.decode_codes)
    return -self.likelihood.log_prob(output, x)

  def log_likelihood_bound(self, variables, x, keys, num_samples, chunk_size):
    """log p(x | z_q(x)) - h w log K: the bound under the uniform prior
    (q(z|x) is a point mass, so the bound needs no samples)."""
    del num_samples, chunk_size
    num_codes = self.model.quantizer.num_codes
    return (-self.reconstruction_nll(variables, x, keys)
            - math.prod(self.grid_shape) * math.log(num_codes))


def vqvae(config, image_shape, likelihood):
  channels = tuple(config.channels)
  scale = 2 ** len(channels)
  height, width, image_channels = image_shape
  if height % scale or width % scale:
    raise errors.ConfigError(
        f'vqvae with {len(channels)} stride-2 layers needs image height and '
        f'width divisible by {scale}, but the data has images of shape '
        f'{tuple(image_shape)}. Use fewer entries in config.model.channels or '
        f'resize with config.data.image_size.')
  if config.codebook_update not in vqvae_objectives.CODEBOOK_UPDATES:
    raise errors.ConfigError(
        f'config.model.codebook_update={config.codebook_update!r}; use one '
        f'of {", ".join(vqvae_objectives.CODEBOOK_UPDATES)}.')
  impl = vae.conv_impl(config)
  collection = ('params' if config.codebook_update == 'loss'
                else vqvae_objectives.EMA_COLLECTION)
  model = VQVAE(
      encoder=GridEncoder(channels, config.code_dim, config.num_residual,
                          impl),
      quantizer=vector_quantizer.VectorQuantizer(
          config.num_codes, config.code_dim, codebook_collection=collection,
          ema_epsilon=config.ema_epsilon),
      decoder=GridDecoder(channels, likelihood.output_channels(image_channels),
                          config.num_residual, impl))
  return VQVAEFamily(model, likelihood, 'vqvae',
                     (height // scale, width // scale))

