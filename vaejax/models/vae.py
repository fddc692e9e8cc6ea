"""Variational autoencoders: MLP and convolutional encoders/decoders, and
their family (`VAEFamily`, the contract of `vaejax.models.family`).

Encoders map images [B, H, W, C] to (mean, log-variance) [B, latent_dim];
decoders map codes [B, latent_dim] to the likelihood's parameters
[B, H, W, C * num_params]. Models are flax.linen modules in NHWC. The prior
is N(0, I) (Kingma & Welling, 2014).
"""
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.scipy.special import ndtri

from vaejax import errors
from vaejax.models import family
from vaejax.models import convolutions
from vaejax.objectives import distributions
from vaejax.objectives import vae as vae_objectives


def mlp_trunk(x, hidden_sizes, dtype, gated=False):
  """Flatten -> ReLU Dense layers `hidden_<i>`, or gated ones
  (h = hidden_i(x) * sigmoid(gate_i(x)), Dauphin et al. 2017, as the MLP
  VAEs of Tomczak & Welling 2018, "VAE with a VampPrior").

  The trunks are functions called inside a module's compact `__call__`, so
  their layers are that module's own (same parameter names as when the
  layers were written out in each encoder and decoder).
  """
  h = x.reshape(x.shape[0], -1)
  for i, size in enumerate(hidden_sizes):
    linear = nn.Dense(size, dtype=dtype, name=f'hidden_{i}')(h)
    if gated:
      h = linear * nn.sigmoid(
          nn.Dense(size, dtype=dtype, name=f'gate_{i}')(h))
    else:
      h = nn.relu(linear)
  return h


def clip_logvar(logvar, logvar_range):
  """The posterior log-variance clipped to `logvar_range` (None: as is), a
  hard tanh as in the VampPrior code ([-6, 2])."""
  if logvar_range is None:
    return logvar
  low, high = logvar_range
  return jnp.clip(logvar, low, high)


def conv_trunk(x, channels, hidden_size, dtype, conv_impl):
  """Stride-2 3x3 GELU convolutions `conv_<i>` -> flatten -> GELU `hidden`."""
  h = x
  for i, c in enumerate(channels):
    h = nn.gelu(convolutions.conv(c, (3, 3), (2, 2), conv_impl, dtype=dtype,
                            name=f'conv_{i}')(h))
  h = h.reshape(h.shape[0], -1)
  return nn.gelu(nn.Dense(hidden_size, dtype=dtype, name='hidden')(h))


class MLPGaussianEncoder(nn.Module):
  """Flatten -> ReLU (or gated) MLP -> (mean, log-variance)."""
  hidden_sizes: Sequence[int]
  latent_dim: int
  dtype: Any = jnp.float32
  gated: bool = False
  logvar_range: Sequence[float] | None = None

  @nn.compact
  def __call__(self, x):
    h = mlp_trunk(x, self.hidden_sizes, self.dtype, self.gated)
    mean = nn.Dense(self.latent_dim, dtype=self.dtype, name='mean')(h)
    logvar = nn.Dense(self.latent_dim, dtype=self.dtype, name='logvar')(h)
    logvar = clip_logvar(logvar.astype(jnp.float32), self.logvar_range)
    return mean.astype(jnp.float32), logvar


class MLPDecoder(nn.Module):
  """Code -> ReLU (or gated) MLP -> likelihood parameters with the image's
  shape."""
  hidden_sizes: Sequence[int]
  output_shape: Sequence[int]
  dtype: Any = jnp.float32
  gated: bool = False

  @nn.compact
  def __call__(self, z):
    h = mlp_trunk(z, self.hidden_sizes, self.dtype, self.gated)
    h = nn.Dense(math.prod(self.output_shape), dtype=self.dtype,
                 name='output')(h)
    return h.reshape(z.shape[0], *self.output_shape).astype(jnp.float32)


class ConvGaussianEncoder(nn.Module):
  """Stride-2 3x3 convolutions (one per entry of `channels`) -> dense heads."""
  channels: Sequence[int]
  latent_dim: int
  hidden_size: int = 256
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'  # convolutions.py: 'auto', 'lax' or 'matmul'

  @nn.compact
  def __call__(self, x):
    h = conv_trunk(x, self.channels, self.hidden_size, self.dtype,
                   self.conv_impl)
    mean = nn.Dense(self.latent_dim, dtype=self.dtype, name='mean')(h)
    logvar = nn.Dense(self.latent_dim, dtype=self.dtype, name='logvar')(h)
    return mean.astype(jnp.float32), logvar.astype(jnp.float32)


class ConvDecoder(nn.Module):
  """Dense -> grid at 1/2^L resolution -> stride-2 transposed convolutions."""
  channels: Sequence[int]  # encoder order; the decoder runs them reversed
  output_shape: Sequence[int]
  hidden_size: int = 256
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'  # convolutions.py: 'auto', 'lax' or 'matmul'

  @nn.compact
  def __call__(self, z):
    height, width, out_channels = self.output_shape
    scale = 2 ** len(self.channels)
    h = nn.gelu(nn.Dense(self.hidden_size, dtype=self.dtype,
                         name='hidden')(z))
    grid = (height // scale, width // scale, self.channels[-1])
    h = nn.gelu(nn.Dense(math.prod(grid), dtype=self.dtype,
                         name='to_grid')(h))
    h = h.reshape(z.shape[0], *grid)
    for i, c in enumerate(reversed(self.channels)):
      # nn.ConvTranspose's parameters and numbers (convolutions.py).
      h = nn.gelu(convolutions.conv_transpose(c, (3, 3), (2, 2), self.conv_impl,
                                        dtype=self.dtype,
                                        name=f'deconv_{i}')(h))
    return convolutions.conv(out_channels, (3, 3), impl=self.conv_impl,
                       dtype=self.dtype, name='output')(h).astype(jnp.float32)


class VAE(nn.Module):
  """An encoder q(z|x) and a decoder p(x|z); the objective combines them."""
  encoder: nn.Module
  decoder: nn.Module

  def encode(self, x):
    return self.encoder(x)

  def decode(self, z):
    return self.decoder(z)

  def __call__(self, x):
    mean, _ = self.encode(x)
    return self.decode(mean)


class VAEFamily(family.Family):
  """The contract for a VAE with a Gaussian posterior and an N(0, I) prior."""
  LACKING = {
      'assign_clusters': 'a VAE is not a mixture model',
      'positive_probability': 'a VAE is not a classifier',
      'classify': 'a VAE is not a classifier (a linear probe classifies its '
                  'latents: linear_probe)',
      'code_grid': 'a VAE has a continuous latent, not a grid of codes',
      'decode_code_grid': 'a VAE has a continuous latent, not a grid of codes',
      'code_log_prob': 'a VAE has no prior over code grids',
  }

  def __init__(self, model, likelihood, name, latent_dim):
    super().__init__(model, likelihood, name)
    self.latent_dim = latent_dim

  def lacking(self, ability):
    if ability == 'prior_grid' and self.latent_dim != 2:
      return (f'the decoded manifold needs a 2-D latent (latent_dim is '
              f'{self.latent_dim})')
    return super().lacking(ability)

  def _posterior(self, variables, x):
    return self.model.apply(variables, x, method=self.model.encode)

  def _decoder_output(self, variables, z):
    return self.model.apply(variables, z, method=self.model.decode)

  def encode(self, variables, x):
    """The posterior mean E_q[z | x]."""
    return self._posterior(variables, x)[0]

  def represent(self, variables, x):
    mean = self.encode(variables, x)
    return mean.reshape(mean.shape[0], -1)

  def decode(self, variables, z):
    return self.likelihood.mean(self._decoder_output(variables, z))

  def reconstruct(self, variables, x, keys):
    del keys  # Decoded at the posterior mean: deterministic.
    return self.decode(variables, self.encode(variables, x))

  def reconstruction_nll(self, variables, x, keys):
    del keys
    return -self.likelihood.log_prob(
        self._decoder_output(variables, self.encode(variables, x)), x)

  def sample(self, variables, key, num):
    z = jax.random.normal(key, (num, self.latent_dim))
    return self.decode(variables, z)

  def log_likelihood_bound(self, variables, x, keys, num_samples, chunk_size):
    return vae_objectives.iwae_log_likelihood(
        self.model, variables, self.likelihood, x, keys, num_samples,
        chunk_size)

  def posterior_kl_per_dim(self, variables, x):
    mean, logvar = self._posterior(variables, x)
    return distributions.gaussian_kl(mean, logvar).reshape(mean.shape[0], -1)

  def prior_grid(self, num_per_axis):
    """Codes at the N(0, 1) quantiles 5%..95% on each axis; rows from the
    top of the grid (high z_2) down."""
    quantiles = ndtri(jnp.linspace(0.05, 0.95, num_per_axis))
    grid = jnp.stack(jnp.meshgrid(quantiles, quantiles[::-1]), -1)
    return grid.reshape(-1, 2)


def compute_dtype(config):
  """`config.dtype`: 'float32' or 'bfloat16' for the layers' computation;
  parameters, optimiser state and the loss stay float32."""
  name = config.dtype
  if name not in ('float32', 'bfloat16'):
    raise errors.ConfigError(
        f"config.model.dtype={name!r}; use 'float32' or 'bfloat16'.")
  return jnp.dtype(name)


def conv_impl(config):
  """`config.conv_impl` resolved for this backend: how convolutions run
  (convolutions.py), 'lax' or 'matmul'."""
  try:
    return convolutions.resolve_conv_impl(config.conv_impl)
  except ValueError as e:
    raise errors.ConfigError(
        f"config.model.{e} ('auto' picks the fast one for the backend)."
    ) from e


def check_logvar_range(logvar_range):
  """`config.logvar_range`, checked: None or (low, high) with low < high."""
  if logvar_range is not None and (len(logvar_range) != 2 or
                                   logvar_range[0] >= logvar_range[1]):
    raise errors.ConfigError(
        f'config.model.logvar_range={logvar_range!r} must be (low, high) '
        f'with low < high, e.g. --config.model.logvar_range=-6,2, or None.')
  return logvar_range


def output_shape(image_shape, likelihood):
  height, width, channels = image_shape
  return (height, width, likelihood.output_channels(channels))


def mlp_vae(config, image_shape, likelihood):
  hidden = tuple(config.hidden_sizes)
  dtype = compute_dtype(config)
  logvar_range = check_logvar_range(config.logvar_range)
  model = VAE(
      encoder=MLPGaussianEncoder(hidden, config.latent_dim, dtype,
                                 config.gated, logvar_range),
      decoder=MLPDecoder(hidden[::-1], output_shape(image_shape, likelihood),
                         dtype, config.gated))
  return VAEFamily(model, likelihood, 'mlp_vae', config.latent_dim)


def conv_vae(config, image_shape, likelihood):
  channels = tuple(config.channels)
  scale = 2 ** len(channels)
  height, width, _ = image_shape
  if height % scale or width % scale:
    raise errors.ConfigError(
        f'conv_vae with {len(channels)} stride-2 layers needs image height '
        f'and width divisible by {scale}, but the data has images of shape '
        f'{tuple(image_shape)}. Use fewer entries in config.model.channels or '
        f'the mlp_vae model.')
  hidden = config.hidden_size
  dtype = compute_dtype(config)
  impl = conv_impl(config)
  model = VAE(
      encoder=ConvGaussianEncoder(channels, config.latent_dim, hidden, dtype,
                                  impl),
      decoder=ConvDecoder(channels, output_shape(image_shape, likelihood),
                          hidden, dtype, impl))
  return VAEFamily(model, likelihood, 'conv_vae', config.latent_dim)
