"""The discretised logistic mixture likelihood for 8-bit images (PixelCNN++).

Salimans et al. 2017, "PixelCNN++", section 2.1-2.2, as VDVAE uses it: each
pixel is a mixture of M logistics discretised into 256 bins of [-1, 1]
(bin centres (2k - 255) / 255, half-width 1/255; the edge bins take the
tails), one set of mixture weights per pixel shared by its channels, and
channel-coupled locations: channel c's location in component m is

  mu'_c,m = mu_c,m + sum_{j < c} tanh(a_cj,m) * x_j      (x in [-1, 1])

so, for RGB, G depends linearly on R and B on R and G within a component,
while the mixture couples them non-linearly. The decoder emits, per pixel,
M * (1 + 2C + C(C-1)/2) channels: M mixture logits, then C x M locations,
C x M log-scales and C(C-1)/2 x M coupling pre-activations (a_10, a_20,
a_21, ... as in PixelCNN++: G|R, B|R, B|G). For grey images (C = 1) that is
3M: weights, locations and scales.

Images are given in [0, 1] as pixel / 255 (the 'scale' transform), like
every likelihood here; the computation is in [-1, 1] coordinates.
"""
import dataclasses

import jax
import jax.numpy as jnp

from vaejax import errors


def params_per_pixel(channels, num_mixtures):
  """Decoder channels per pixel for C image channels and M components."""
  return num_mixtures * (1 + 2 * channels + channels * (channels - 1) // 2)


def log_bin_mass(x, loc, log_scale, num_bins=256):
  """log P(bin of x) of a logistic(loc, exp(log_scale)) discretised into
  `num_bins` bins of [-1, 1]; x, loc and log_scale in [-1, 1] coordinates,
  x a bin centre. The edge bins take the tails.

  log(sigmoid(plus) - sigmoid(minus)) is written as plus + log(1 -
  e^(minus - plus)) + log sigmoid(-plus) + log sigmoid(-minus): finite for
  any scale (expm1 of a non-positive number cannot overflow) and offset.
  """
  half_bin = 1.0 / (num_bins - 1)
  inv_scale = jnp.exp(-log_scale)
  plus = inv_scale * (x - loc + half_bin)
  minus = inv_scale * (x - loc - half_bin)
  inner = (plus + jnp.log(-jnp.expm1(minus - plus))
           + jax.nn.log_sigmoid(-plus) + jax.nn.log_sigmoid(-minus))
  edge = 1.0 - half_bin
  return jnp.where(x < -edge, jax.nn.log_sigmoid(plus),
                   jnp.where(x > edge, jax.nn.log_sigmoid(-minus), inner))


def split(params, channels, num_mixtures):
  """[..., P] -> (logits [..., M], locs [..., C, M], log_scales [..., C, M],
  coefficients [..., C(C-1)/2, M] after tanh)."""
  m = num_mixtures
  expected = params_per_pixel(channels, m)
  if params.shape[-1] != expected:
    raise errors.ConfigError(
        f'the discretised logistic mixture with {m} components over '
        f'{channels} image channels needs {expected} decoder channels per '
        f'pixel, but the decoder gives {params.shape[-1]}; build the decoder '
        f'with likelihood.output_channels({channels}).')
  lead = params.shape[:-1]
  logits = params[..., :m]
  locs = params[..., m:m + channels * m].reshape(*lead, channels, m)
  log_scales = params[..., m + channels * m:m + 2 * channels * m].reshape(
      *lead, channels, m)
  coefficients = jnp.tanh(params[..., m + 2 * channels * m:]).reshape(
      *lead, channels * (channels - 1) // 2, m)
  return logits, locs, log_scales, coefficients


def pair_index(c, j):
  """Row of the coupling of channel c to channel j < c: (1,0), (2,0),
  (2,1), ..."""
  return c * (c - 1) // 2 + j


def coupled_locations(locs, coefficients, x):
  """mu'_c = mu_c + sum_{j<c} coefficient_cj * x_j, per component.

  locs [..., C, M], coefficients [..., C(C-1)/2, M], x [..., C] in [-1, 1]
  (the true previous channels when scoring, the predicted ones for means).
  """
  rows = []
  for c in range(locs.shape[-2]):
    loc = locs[..., c, :]
    for j in range(c):
      loc = loc + coefficients[..., pair_index(c, j), :] * x[..., j, None]
    rows.append(loc)
  return jnp.stack(rows, axis=-2)


def log_prob_per_pixel(params, x, num_mixtures, min_log_scale,
                       num_bins=256):
  """log P(x) per pixel [..., H, W]; params [..., H, W, P], x [..., H, W, C]
  in [0, 1] (broadcast against params' leading axes)."""
  channels = x.shape[-1]
  logits, locs, log_scales, coefficients = split(params, channels,
                                                 num_mixtures)
  x = jnp.broadcast_to(2.0 * x - 1.0, params.shape[:-1] + (channels,))
  locs = coupled_locations(locs, coefficients, x)
  log_scales = jnp.maximum(log_scales, min_log_scale)
  per_channel = log_bin_mass(x[..., None], locs, log_scales, num_bins)
  return jax.nn.logsumexp(
      jax.nn.log_softmax(logits, axis=-1) + jnp.sum(per_channel, axis=-2),
      axis=-1)


def mean_image(params, channels, num_mixtures):
  """The image shown for these parameters, in [0, 1]: channel by channel,
  the mixture-weighted average of the component locations (clipped to the
  data range), each channel coupled to the previous channels' values so
  computed. (Not the exact mean of the discretised mixture, which needs the
  previous channels' distribution, not one value.)"""
  logits, locs, _, coefficients = split(params, channels, num_mixtures)
  weights = jax.nn.softmax(logits, axis=-1)
  values = []
  for c in range(channels):
    loc = locs[..., c, :]
    for j in range(c):
      loc = loc + coefficients[..., pair_index(c, j), :] * values[j][..., None]
    values.append(jnp.sum(weights * jnp.clip(loc, -1.0, 1.0), axis=-1))
  return (jnp.stack(values, axis=-1) + 1.0) / 2.0


@dataclasses.dataclass(frozen=True)
class LogisticMixtureLikelihood:
  """The `likelihoods.Likelihood` interface for the mixture: its parameters
  couple a pixel's channels, so it is not elementwise per channel."""
  num_mixtures: int
  min_log_scale: float
  name: str = 'logistic_mixture'
  discrete: bool = True

  def output_channels(self, image_channels):
    return params_per_pixel(image_channels, self.num_mixtures)

  def image_channels(self, params):
    """C such that params has output_channels(C) channels."""
    for channels in range(1, 5):
      if self.output_channels(channels) == params.shape[-1]:
        return channels
    raise errors.ConfigError(
        f'{params.shape[-1]} decoder channels per pixel fit no image of 1-4 '
        f'channels under the discretised logistic mixture with '
        f'{self.num_mixtures} components (grey needs '
        f'{self.output_channels(1)}, RGB {self.output_channels(3)}).')

  def log_prob(self, params, x):
    """log p(x | params) summed over the (H, W) axes of each example."""
    per_pixel = log_prob_per_pixel(params, x, self.num_mixtures,
                                   self.min_log_scale)
    return jnp.sum(per_pixel, axis=(-2, -1))

  def mean(self, params):
    return mean_image(params, self.image_channels(params), self.num_mixtures)
