"""Convolutional top-down blocks of a hierarchical VAE (NVAE / VDVAE style).

A hierarchical VAE has groups of latents z_1..z_L on feature maps; the
top-down path carries a state h from group to group. At group l the prior
p(z_l | z_<l) is read from h, the posterior q(z_l | x, z_<l) from h and the
bottom-up features of x at the same resolution, and the sample z_l is
projected back into h, followed by a residual block. Each block returns its
own KL (VDVAE), per latent element, for the objective to sum per group.

The posterior is parameterised relative to the prior (NVAE):
mean_q = mean_p + delta_mean, logvar_q = logvar_p + delta_logvar, so

  KL(q || p) = 1/2 (delta_mean^2 / var_p + exp(delta_logvar) - 1
                    - delta_logvar),

which does not depend on the prior's mean, and a posterior that only
copies the prior costs exactly zero (`distributions.residual_gaussian_kl`).

References:
  Vahdat & Kautz 2020, "NVAE: A Deep Hierarchical Variational
  Autoencoder" (residual normal distributions, equation 2);
  Child 2021, "Very Deep VAEs Generalize Autoregressive Models and Can
  Outperform Them on Images" (the top-down block, the bottleneck residual
  block, scaled initialisation of the last convolutions).
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vaejax.models import convolutions
from vaejax.objectives import distributions


class BottleneckBlock(nn.Module):
  """VDVAE's block: GELU -> 1x1 conv to `bottleneck` -> GELU -> 3x3 ->
  GELU -> 3x3 -> GELU -> 1x1 conv to `features` (+ input if `residual`).

  The last convolution's initial kernel is scaled by `output_scale` (VDVAE:
  1/sqrt(number of blocks), so a deep stack starts near the identity).
  """
  bottleneck: int
  features: int
  residual: bool = False
  output_scale: float = 1.0
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'  # convolutions.py: 'auto', 'lax' or 'matmul'

  @nn.compact
  def __call__(self, x):
    h = x
    for i, (features, size) in enumerate(
        [(self.bottleneck, 1), (self.bottleneck, 3), (self.bottleneck, 3)]):
      h = convolutions.conv(features, (size, size), impl=self.conv_impl,
                            dtype=self.dtype, name=f'conv_{i}')(nn.gelu(h))
    init = nn.initializers.variance_scaling(
        self.output_scale ** 2, 'fan_in', 'truncated_normal')
    h = convolutions.conv(self.features, (1, 1), impl=self.conv_impl,
                          dtype=self.dtype, kernel_init=init,
                          name='conv_out')(nn.gelu(h))
    return x + h if self.residual else h


class TopDownBlock(nn.Module):
  """One group of latents: (h, bottom-up features, key) -> (h', kl, z).

  prior:     [mean_p, logvar_p, dh] = BottleneckBlock(h); h += dh
  posterior: [delta_mean, delta_logvar] = BottleneckBlock([h_in, bottom_up])
  z ~ q (given `bottom_up`) or p (sampling, `bottom_up=None`; kl is then
  None); h += 1x1 conv(z); h = residual BottleneckBlock(h).

  Shapes: h [B, H, W, features], bottom_up [B, H, W, C], z and kl [B, H, W,
  latent_channels]. `temperature` scales the prior's standard deviation
  when sampling.
  """
  features: int
  bottleneck: int
  latent_channels: int
  output_scale: float = 1.0
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, h, bottom_up: Optional[jax.Array], key,
               temperature: float = 1.0):
    def block(features, name, residual=False):
      return BottleneckBlock(self.bottleneck, features, residual,
                             self.output_scale, self.dtype, self.conv_impl,
                             name=name)

    z_dim = self.latent_channels
    # Split, not sliced: the transpose of a split is one concatenation,
    # that of each slice a full-size padded copy.
    prior_mean, prior_logvar, h_update = jnp.split(
        block(2 * z_dim + self.features, 'prior')(h), [z_dim, 2 * z_dim],
        axis=-1)
    prior_mean = prior_mean.astype(jnp.float32)
    prior_logvar = prior_logvar.astype(jnp.float32)
    noise = jax.random.normal(key, prior_mean.shape)
    if bottom_up is None:
      z = prior_mean + temperature * jnp.exp(0.5 * prior_logvar) * noise
      kl = None
    else:
      posterior = block(2 * z_dim, 'posterior')(
          jnp.concatenate([h, bottom_up.astype(h.dtype)], axis=-1))
      delta_mean, delta_logvar = jnp.split(posterior.astype(jnp.float32), 2,
                                           axis=-1)
      z = (prior_mean + delta_mean
           + jnp.exp(0.5 * (prior_logvar + delta_logvar)) * noise)
      kl = distributions.residual_gaussian_kl(delta_mean, delta_logvar,
                                              prior_logvar)
    h = h + h_update.astype(h.dtype)
    init = nn.initializers.variance_scaling(
        self.output_scale ** 2, 'fan_in', 'truncated_normal')
    h = h + convolutions.conv(self.features, (1, 1), impl=self.conv_impl,
                              dtype=self.dtype, kernel_init=init,
                              name='z_projection')(z.astype(self.dtype))
    return block(self.features, 'residual', residual=True)(h), kl, z
