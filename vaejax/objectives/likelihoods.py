"""Decoder likelihoods p(x | z): per-example log-probabilities of images.

A decoder emits `output_channels(C)` channels per pixel of a C-channel image
(`num_params` per image channel for the elementwise ones); the likelihood
splits them into its parameters. 'logistic_mixture' (vaejax/objectives/
logistic_mixture.py) couples a pixel's channels. `log_prob(params, x)` returns one value per example
(summed over pixels); `mean(params)` is the image shown in reconstructions and
samples.
"""
import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from vaejax import registry
from vaejax.objectives import logistic_mixture


@dataclasses.dataclass(frozen=True)
class Likelihood:
  """A per-pixel likelihood family for images in [0, 1].

  `log_density(x, *parts)` and `mean(*parts)` work elementwise on the
  parameter parts (loc, log-scale, ...), each shaped like the image.
  """
  name: str
  num_params: int
  log_density: Callable[..., jax.Array]
  mean_of: Callable[..., jax.Array]
  # Whether the likelihood is a probability mass on the values the data takes
  # (binary or 8-bit), so -log p is a code length in nats. Continuous
  # densities need dequantised data for bits/dim to mean anything.
  discrete: bool

  def split(self, params):
    """[..., H, W, C * num_params] -> num_params arrays [..., H, W, C]."""
    return tuple(jnp.split(params, self.num_params, axis=-1))

  def log_prob(self, params, x):
    """log p(x | params) summed over the last three (H, W, C) axes.

    Computed on flattened [..., H * W * C] arrays: XLA's CPU backend runs
    elementwise work on a trailing axis of size C = 1 several times slower.
    """
    def flatten(a):
      return a.reshape(*a.shape[:-3], -1)
    parts = [flatten(p) for p in self.split(params)]
    x = jnp.broadcast_to(flatten(x), parts[0].shape)
    return jnp.sum(self.log_density(x, *parts), axis=-1)

  def mean(self, params):
    """The image shown for these parameters (reconstructions, samples)."""
    return self.mean_of(*self.split(params))

  def output_channels(self, image_channels):
    """Channels per pixel the decoder emits for an image of this many."""
    return image_channels * self.num_params


def log_likelihood_bernoulli(x, logits):
  """x log sigmoid(l) + (1 - x) log sigmoid(-l), finite for any logit.

  Written as x l + log sigmoid(-l) (the same value, since log sigmoid(l) =
  l + log sigmoid(-l)): one transcendental per pixel instead of two, which
  halves the cost of the likelihood on CPU.
  """
  return x * logits + jax.nn.log_sigmoid(-logits)


def log_likelihood_gaussian(x, mean, log_scale):
  return (-0.5 * math.log(2 * math.pi) - log_scale
          - 0.5 * jnp.square((x - mean) * jnp.exp(-log_scale)))


def log_likelihood_laplace(x, loc, log_scale):
  return -math.log(2.0) - log_scale - jnp.abs(x - loc) * jnp.exp(-log_scale)


def log_likelihood_discretized_logistic(x, loc, log_scale, num_bins=256):
  """log P(bin of x) under a logistic discretised into `num_bins` bins on [0, 1].

  x holds bin centres k / (num_bins - 1). The edge bins take the tails
  (PixelCNN++, Salimans et al. 2017). Computed in [-1, 1] coordinates, as
  one component of `logistic_mixture`.
  """
  return logistic_mixture.log_bin_mass(2.0 * x - 1.0, 2.0 * loc - 1.0,
                                        log_scale, num_bins)


def _fixed_scale_likelihood(name, log_density, scale):
  log_scale = math.log(scale)
  return Likelihood(
      name=name, num_params=1, discrete=False,
      log_density=lambda x, loc: log_density(x, loc, log_scale),
      mean_of=lambda loc: loc)


def _learned_scale_likelihood(name, log_density, min_log_scale,
                              discrete=False, mean_of=lambda loc, _: loc):
  return Likelihood(
      name=name, num_params=2, discrete=discrete,
      log_density=lambda x, loc, raw_log_scale: log_density(
          x, loc, jnp.maximum(raw_log_scale, min_log_scale)),
      mean_of=mean_of)


def bernoulli(config):
  del config
  return Likelihood(
      name='bernoulli', num_params=1, discrete=True,
      log_density=log_likelihood_bernoulli, mean_of=jax.nn.sigmoid)


def gaussian(config):
  return _fixed_scale_likelihood(
      'gaussian', log_likelihood_gaussian, config.likelihood_scale)


def gaussian_learned(config):
  return _learned_scale_likelihood(
      'gaussian_learned', log_likelihood_gaussian,
      config.min_log_scale)


def laplace(config):
  return _fixed_scale_likelihood(
      'laplace', log_likelihood_laplace, config.likelihood_scale)


def laplace_learned(config):
  return _learned_scale_likelihood(
      'laplace_learned', log_likelihood_laplace,
      config.min_log_scale)


def discretized_logistic(config):
  return _learned_scale_likelihood(
      'discretized_logistic', log_likelihood_discretized_logistic,
      config.min_log_scale, discrete=True,
      mean_of=lambda loc, _: jnp.clip(loc, 0.0, 1.0))


def discretized_logistic_mixture(config):
  return logistic_mixture.LogisticMixtureLikelihood(
      num_mixtures=config.num_mixtures, min_log_scale=config.min_log_scale)


LIKELIHOODS = registry.Registry('likelihood', {
    'bernoulli': bernoulli,
    'gaussian': gaussian,
    'gaussian_learned': gaussian_learned,
    'laplace': laplace,
    'laplace_learned': laplace_learned,
    'discretized_logistic': discretized_logistic,
    'logistic_mixture': discretized_logistic_mixture,
}, 'config.objective.likelihood')


def get_likelihood(config: ml_collections.ConfigDict) -> Likelihood:
  """The likelihood named by `config.likelihood` (config = config.objective)."""
  return LIKELIHOODS.get(config.likelihood)(config)
