"""Deterministic autoencoders: z = E(x), x_hat = D(z), MLP and convolutional.

Encoders map images [B, H, W, C] to one code [B, code_dim]; the decoders are
the VAE's (`vae.MLPDecoder`, `vae.ConvDecoder`), which map a code to the
likelihood's parameters [B, H, W, C * num_params]: logits for the Bernoulli
cross-entropy, the reconstruction itself for MSE, MAE and Smooth-L1. The
bottleneck is checked to be smaller than the input (undercomplete), so the
identity cannot be learned.

With no hidden layers the MLP autoencoder is affine,
x_hat = W_d (W_e x + b_e) + b_d, and its MSE optimum spans the top principal
subspace of the data.
"""
import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from vaejax import errors
from vaejax import registry
from vaejax.models import family
from vaejax.models import vae

CODE_ACTIVATIONS = registry.Registry('code activation', {
    'linear': lambda h: h,
    # Codes that can be exactly zero: what a sparsity penalty is meant to get.
    'relu': nn.relu,
}, 'config.model.code_activation')


class MLPEncoder(nn.Module):
  """Flatten -> ReLU MLP -> code."""
  hidden_sizes: Sequence[int]
  code_dim: int
  code_activation: str = 'linear'

  @nn.compact
  def __call__(self, x):
    h = vae.mlp_trunk(x, self.hidden_sizes, jnp.float32)
    code = nn.Dense(self.code_dim, name='code')(h)
    return CODE_ACTIVATIONS.get(self.code_activation)(code)


class ConvEncoder(nn.Module):
  """Stride-2 3x3 convolutions (one per `channels` entry) -> dense -> code."""
  channels: Sequence[int]
  code_dim: int
  hidden_size: int = 256
  code_activation: str = 'linear'
  conv_impl: str = 'auto'  # convolutions.py: 'auto', 'lax' or 'matmul'

  @nn.compact
  def __call__(self, x):
    h = vae.conv_trunk(x, self.channels, self.hidden_size, jnp.float32,
                       self.conv_impl)
    code = nn.Dense(self.code_dim, name='code')(h)
    return CODE_ACTIVATIONS.get(self.code_activation)(code)


class Autoencoder(nn.Module):
  """An encoder to a deterministic code and a decoder back to the image."""
  encoder: nn.Module
  decoder: nn.Module

  def encode(self, x):
    return self.encoder(x)

  def decode(self, code):
    return self.decoder(code)

  def __call__(self, x):
    return self.decode(self.encode(x))


class AutoencoderFamily(family.Family):
  """The contract for a deterministic autoencoder: a code and its decoding.

  The likelihood only turns decoder outputs into images (the sigmoid of BCE
  logits, the output itself otherwise) and gives `reconstruction_nll`.
  """
  LACKING = {
      'sample': 'a deterministic autoencoder has no prior to sample from',
      'log_likelihood_bound': 'a deterministic autoencoder defines no p(x)',
      'posterior_kl_per_dim': 'a deterministic autoencoder has no posterior',
      'prior_grid': 'a deterministic autoencoder has no prior',
      'assign_clusters': 'an autoencoder is not a mixture model',
      'positive_probability': 'an autoencoder is not a classifier',
      'classify': 'an autoencoder is not a classifier (a linear probe '
                  'classifies its codes: linear_probe)',
      'code_grid': 'the code is a continuous vector, not a grid of codes',
      'decode_code_grid': 'the code is a continuous vector, not a grid',
      'code_log_prob': 'a deterministic autoencoder has no prior',
  }

  def encode(self, variables, x):
    return self.model.apply(variables, x, method=self.model.encode)

  def represent(self, variables, x):
    code = self.encode(variables, x)
    return code.reshape(code.shape[0], -1)

  def _decoder_output(self, variables, code):
    return self.model.apply(variables, code, method=self.model.decode)

  def decode(self, variables, code):
    return self.likelihood.mean(self._decoder_output(variables, code))

  def reconstruct(self, variables, x, keys):
    del keys
    return self.decode(variables, self.encode(variables, x))

  def reconstruction_nll(self, variables, x, keys):
    del keys
    return -self.likelihood.log_prob(
        self._decoder_output(variables, self.encode(variables, x)), x)


def _check_code(config, image_shape):
  if config.code_dim >= math.prod(image_shape):
    raise errors.ConfigError(
        f'config.model.code_dim={config.code_dim} is not smaller than the '
        f'input ({math.prod(image_shape)} values for images of shape '
        f'{tuple(image_shape)}): an undercomplete autoencoder needs a '
        f'bottleneck. Lower config.model.code_dim.')
  CODE_ACTIVATIONS.get(config.code_activation)


def mlp_autoencoder(config, image_shape, likelihood):
  _check_code(config, image_shape)
  hidden = tuple(config.hidden_sizes)
  model = Autoencoder(
      encoder=MLPEncoder(hidden, config.code_dim, config.code_activation),
      decoder=vae.MLPDecoder(
          hidden[::-1], vae.output_shape(image_shape, likelihood)))
  return AutoencoderFamily(model, likelihood, 'mlp_autoencoder')


def conv_autoencoder(config, image_shape, likelihood):
  _check_code(config, image_shape)
  channels = tuple(config.channels)
  scale = 2 ** len(channels)
  height, width, _ = image_shape
  if height % scale or width % scale:
    raise errors.ConfigError(
        f'conv_autoencoder with {len(channels)} stride-2 layers needs image '
        f'height and width divisible by {scale}, but the data has images of '
        f'shape {tuple(image_shape)}. Use fewer entries in '
        f'config.model.channels or the mlp_autoencoder model.')
  hidden = config.hidden_size
  impl = vae.conv_impl(config)
  model = Autoencoder(
      encoder=ConvEncoder(channels, config.code_dim, hidden,
                          config.code_activation, impl),
      decoder=vae.ConvDecoder(
          channels, vae.output_shape(image_shape, likelihood), hidden,
          conv_impl=impl))
  return AutoencoderFamily(model, likelihood, 'conv_autoencoder')
