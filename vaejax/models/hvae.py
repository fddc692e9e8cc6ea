"""Top-down hierarchical VAEs (NVAE / VDVAE style), MLP and convolutional,
and their family (`HVAEFamily`, the contract of `vaejax.models.family`).

A bottom-up network computes features of x once. The top-down path carries
a state h through L groups of latents, top group first. At group l the
prior p(z_l | z_<l) is read from h, the posterior q(z_l | x, z_<l) from h
and the bottom-up features, both sharing the state; the posterior is a
residual relative to the prior (mean_p + delta_mean, logvar_p +
delta_logvar; `distributions.residual_gaussian_kl`), z_l is drawn from q (or
from p when sampling) and folded back into h. The decoder reads the last
state. The top group's prior is read from a learned initial state, so it is
a learned diagonal Gaussian.

Noise is drawn from one PRNG key per row (`group_noise`), so results never
depend on how a batch is split over devices. Every pass returns, per group,
the sample and both distributions' parameters ({'z', 'prior_mean',
'prior_logvar', 'delta_mean', 'delta_logvar'}): the objective
(`vaejax.objectives.hvae`) forms the KL per group and the importance
weights from them.

References:
  Sønderby et al. 2016, "Ladder Variational Autoencoders" (the top-down
  posterior sharing the prior's path); Vahdat & Kautz 2020, "NVAE"
  (residual normal distributions); Child 2021, "Very Deep VAEs";
  Tomczak & Welling 2018, "VAE with a VampPrior" (the two-level MLP HVAE
  with gated layers of the Fashion-MNIST table).
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vaejax import errors
from vaejax.models import convolutions
from vaejax.models import family
from vaejax.models import hierarchical
from vaejax.models import vae
from vaejax.objectives import hvae as hvae_objectives


def group_noise(keys, index, shape):
  """N(0, I) noise [N, *shape] for group `index`: row n from
  fold_in(keys[n], index)."""
  return jax.vmap(lambda key: jax.random.normal(
      jax.random.fold_in(key, index), tuple(shape)))(keys)


def draw_group(prior, posterior, noise, logvar_range, temperature):
  """One group's sample and parameters from the prior network's output
  [..., 2d] and the posterior network's (None: sample from the prior with
  its standard deviation scaled by `temperature`).

  Both log-variances are clipped to `logvar_range`; the posterior's delta
  is taken after clipping, so the stored parameters are the ones used.
  """
  prior_mean, prior_logvar = jnp.split(prior.astype(jnp.float32), 2, -1)
  prior_logvar = vae.clip_logvar(prior_logvar, logvar_range)
  if posterior is None:
    z = prior_mean + temperature * jnp.exp(0.5 * prior_logvar) * noise
    return {'z': z, 'prior_mean': prior_mean, 'prior_logvar': prior_logvar}
  delta_mean, delta_logvar = jnp.split(posterior.astype(jnp.float32), 2, -1)
  delta_logvar = vae.clip_logvar(prior_logvar + delta_logvar,
                                 logvar_range) - prior_logvar
  z = (prior_mean + delta_mean
       + jnp.exp(0.5 * (prior_logvar + delta_logvar)) * noise)
  return {'z': z, 'prior_mean': prior_mean, 'prior_logvar': prior_logvar,
          'delta_mean': delta_mean, 'delta_logvar': delta_logvar}


class MLPHead(nn.Module):
  """One ReLU (or gated) hidden layer of `hidden` units -> Dense(`out`)."""
  hidden: int
  out: int
  gated: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = vae.mlp_trunk(x, (self.hidden,), self.dtype, self.gated)
    return nn.Dense(self.out, dtype=self.dtype, name='output')(h)


class MLPBottomUp(nn.Module):
  """x -> gated MLP features, shared by every group's posterior."""
  hidden_sizes: Sequence[int]
  num_groups: int
  gated: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = vae.mlp_trunk(x, self.hidden_sizes, self.dtype, self.gated)
    return (features,) * self.num_groups


class MLPTopDown(nn.Module):
  """Groups of `latent_dims` (top first) on a state of `features` units:
  h += head(z_l); h += head(h) after each group."""
  features: int
  latent_dims: Sequence[int]
  gated: bool
  logvar_range: Sequence[float] | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, bottom_up, keys, temperature=1.0):
    h = jnp.broadcast_to(
        self.param('initial_state', nn.initializers.zeros, (self.features,)),
        (keys.shape[0], self.features)).astype(self.dtype)
    groups = []
    for l, dim in enumerate(self.latent_dims):
      def head(out, name):
        return MLPHead(self.features, out, self.gated, self.dtype,
                       name=f'group_{l}_{name}')
      prior = head(2 * dim, 'prior')(h)
      posterior = None if bottom_up is None else head(2 * dim, 'posterior')(
          jnp.concatenate([h, bottom_up[l].astype(h.dtype)], -1))
      group = draw_group(prior, posterior, group_noise(keys, l, (dim,)),
                         self.logvar_range, temperature)
      h = h + head(self.features, 'embed')(group['z'].astype(self.dtype))
      h = h + head(self.features, 'residual')(h)
      groups.append(group)
    return h, groups


def upsample(h):
  """Nearest-neighbour x2 upsampling of [B, H, W, C]."""
  return jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)


def downsample(h):
  """2x2 average pooling of [B, H, W, C]."""
  return nn.avg_pool(h, (2, 2), (2, 2))


class ConvBottomUp(nn.Module):
  """x -> stem conv -> residual bottleneck blocks at 1/2 and 1/4 of the
  image's resolution; each group reads the features at its resolution
  (top groups at 1/4)."""
  width: int
  bottleneck: int
  groups_per_scale: Sequence[int]  # (at 1/4, at 1/2) of the resolution
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    def block(h, name):
      return hierarchical.BottleneckBlock(
          self.bottleneck, self.width, True, dtype=self.dtype,
          conv_impl=self.conv_impl, name=name)(h)
    h = convolutions.conv(self.width, (3, 3), impl=self.conv_impl,
                          dtype=self.dtype, name='stem')(x)
    half = block(downsample(block(h, 'block_full')), 'block_half')
    quarter = block(downsample(half), 'block_quarter')
    top, lower = self.groups_per_scale
    return (quarter,) * top + (half,) * lower


class ConvTopDown(nn.Module):
  """`groups_per_scale` groups of `latent_channels` at 1/4, then (after
  upsampling) at 1/2 of `image_shape`'s resolution: NVAE/VDVAE top-down
  blocks with the prior, posterior and state update convolutional."""
  width: int
  bottleneck: int
  latent_channels: int
  groups_per_scale: Sequence[int]
  image_shape: Sequence[int]
  logvar_range: Sequence[float] | None = None
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, bottom_up, keys, temperature=1.0):
    height, width, _ = self.image_shape
    num_groups = sum(self.groups_per_scale)
    scale = (num_groups * 2) ** -0.5

    def block(features, name, residual=False):
      return hierarchical.BottleneckBlock(
          self.bottleneck, features, residual, scale, self.dtype,
          self.conv_impl, name=name)

    h = self.param('initial_state', nn.initializers.zeros,
                   (height // 4, width // 4, self.width))
    h = jnp.broadcast_to(h, (keys.shape[0], *h.shape)).astype(self.dtype)
    groups = []
    for l in range(num_groups):
      if l == self.groups_per_scale[0]:
        h = upsample(h)
      prior = block(2 * self.latent_channels, f'group_{l}_prior')(h)
      posterior = None if bottom_up is None else block(
          2 * self.latent_channels, f'group_{l}_posterior')(
              jnp.concatenate([h, bottom_up[l].astype(h.dtype)], -1))
      noise = group_noise(keys, l, (*h.shape[1:3], self.latent_channels))
      group = draw_group(prior, posterior, noise, self.logvar_range,
                         temperature)
      h = h + convolutions.conv(self.width, (1, 1), impl=self.conv_impl,
                                dtype=self.dtype, name=f'group_{l}_embed')(
                                    group['z'].astype(self.dtype))
      h = block(self.width, f'group_{l}_residual', residual=True)(h)
      groups.append(group)
    return h, groups


class ConvOutput(nn.Module):
  """The last state (1/2 resolution) -> upsample -> residual block ->
  1x1 conv to the likelihood's parameters."""
  width: int
  bottleneck: int
  out_channels: int
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, h):
    h = hierarchical.BottleneckBlock(
        self.bottleneck, self.width, True, dtype=self.dtype,
        conv_impl=self.conv_impl, name='block')(upsample(h))
    return convolutions.conv(self.out_channels, (1, 1), impl=self.conv_impl,
                             dtype=self.dtype, name='output')(
                                 nn.gelu(h)).astype(jnp.float32)


class TopDownVAE(nn.Module):
  """Bottom-up features, the top-down path and the decoder of its state."""
  bottom_up: nn.Module
  top_down: nn.Module
  decoder: nn.Module

  def posterior(self, x, keys):
    """Likelihood parameters and groups for z ~ q(z | x): one sample per
    key; keys [B] or [B, S] (S samples per example, rows b * S + s; the
    bottom-up features are computed once per example)."""
    features = self.bottom_up(x)
    if keys.ndim == 2:
      samples = keys.shape[1]
      features = tuple(jnp.repeat(f, samples, axis=0) for f in features)
      keys = keys.reshape(-1)
    h, groups = self.top_down(features, keys)
    return self.decoder(h), groups

  def prior(self, keys, temperature=1.0):
    """Likelihood parameters and groups for z ~ p(z), one sample per key."""
    h, groups = self.top_down(None, keys, temperature)
    return self.decoder(h), groups

  def __call__(self, x):
    """A posterior pass with fixed noise (what `init` traces)."""
    return self.posterior(x, jax.random.split(jax.random.key(0), x.shape[0]))


class HVAEFamily(family.Family):
  """The contract for a top-down hierarchical VAE."""
  LACKING = {
      'code_grid': 'a hierarchical VAE has continuous latents, not codes',
      'decode_code_grid': 'a hierarchical VAE has continuous latents',
      'code_log_prob': 'a hierarchical VAE has no prior over code grids',
      'classify': 'a hierarchical VAE is not a classifier (a linear probe '
                  'classifies its top latents: linear_probe)',
      'encode': 'the code of a top-down VAE is several groups, each '
                'conditioned on those above: no single code to interpolate',
      'decode': 'the code of a top-down VAE is several groups, each '
                'conditioned on those above: no single code to decode',
      'posterior_kl_per_dim': 'the KL of a lower group depends on a sample '
                              'of the groups above (training metrics report '
                              'kl_group_<l>)',
      'prior_grid': 'the prior is a hierarchy of groups, not a 2-D latent',
      'assign_clusters': 'a VAE is not a mixture model',
      'positive_probability': 'a VAE is not a classifier',
  }

  def _posterior(self, variables, x, keys):
    return self.model.apply(variables, x, keys, method=self.model.posterior)

  def represent(self, variables, x):
    """The top group's posterior mean (it depends on x only)."""
    keys = jax.random.split(jax.random.key(0), x.shape[0])
    _, groups = self._posterior(variables, x, keys)
    mean = groups[0]['prior_mean'] + groups[0]['delta_mean']
    return mean.reshape(mean.shape[0], -1)

  def reconstruct(self, variables, x, keys):
    """The likelihood's mean for one posterior sample of every group."""
    return self.likelihood.mean(self._posterior(variables, x, keys)[0])

  def reconstruction_nll(self, variables, x, keys):
    return -self.likelihood.log_prob(self._posterior(variables, x, keys)[0],
                                     x)

  def sample(self, variables, key, num):
    params, _ = self.model.apply(variables, jax.random.split(key, num),
                                 method=self.model.prior)
    return self.likelihood.mean(params)

  def log_likelihood_bound(self, variables, x, keys, num_samples, chunk_size):
    return hvae_objectives.iwae_log_likelihood(
        self.model, variables, self.likelihood, x, keys, num_samples,
        chunk_size)


def mlp_hvae(config, image_shape, likelihood):
  hidden = tuple(config.hidden_sizes)
  latent_dims = tuple(config.latent_dims)
  dtype = vae.compute_dtype(config)
  logvar_range = vae.check_logvar_range(config.logvar_range)
  model = TopDownVAE(
      bottom_up=MLPBottomUp(hidden, len(latent_dims), config.gated, dtype),
      top_down=MLPTopDown(hidden[-1], latent_dims, config.gated,
                          logvar_range, dtype),
      decoder=vae.MLPDecoder(hidden[::-1],
                             vae.output_shape(image_shape, likelihood),
                             dtype, config.gated))
  return HVAEFamily(model, likelihood, 'mlp_hvae')


def conv_hvae(config, image_shape, likelihood):
  height, width, _ = image_shape
  if height % 4 or width % 4:
    raise errors.ConfigError(
        f'conv_hvae places its groups at 1/4 and 1/2 of the resolution and '
        f'needs image height and width divisible by 4, but the data has '
        f'images of shape {tuple(image_shape)}. Use the mlp_hvae model.')
  groups_per_scale = tuple(config.groups_per_scale)
  if len(groups_per_scale) != 2:
    raise errors.ConfigError(
        f'config.model.groups_per_scale={groups_per_scale!r} must be two '
        f'numbers: groups at 1/4 and at 1/2 of the resolution.')
  dtype = vae.compute_dtype(config)
  impl = vae.conv_impl(config)
  logvar_range = vae.check_logvar_range(config.logvar_range)
  out_channels = vae.output_shape(image_shape, likelihood)[-1]
  model = TopDownVAE(
      bottom_up=ConvBottomUp(config.width, config.bottleneck,
                             groups_per_scale, dtype, impl),
      top_down=ConvTopDown(config.width, config.bottleneck,
                           config.latent_channels, groups_per_scale,
                           tuple(image_shape), logvar_range, dtype, impl),
      decoder=ConvOutput(config.width, config.bottleneck, out_channels,
                         dtype, impl))
  return HVAEFamily(model, likelihood, 'conv_hvae')
