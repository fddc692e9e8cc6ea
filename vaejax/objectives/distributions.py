"""Gaussian latents: reparameterisation, closed-form KL and log densities.

All functions are pure and work on one example or a batch (leading axes are
broadcast); PRNG keys are explicit.
"""
import math

import jax
import jax.numpy as jnp

LOG_2PI = math.log(2.0 * math.pi)


def reparameterize(key, mean, logvar, num_samples=None):
  """Draws z = mean + exp(logvar / 2) * eps with eps ~ N(0, I).

  Args:
    key: a PRNG key.
    mean, logvar: arrays of the same shape.
    num_samples: if given, draws that many samples along a new leading axis.

  Returns:
    z with shape `mean.shape` or `(num_samples, *mean.shape)`; the gradient
    flows through `mean` and `logvar`.
  """
  shape = mean.shape if num_samples is None else (num_samples, *mean.shape)
  eps = jax.random.normal(key, shape, mean.dtype)
  return mean + jnp.exp(0.5 * logvar) * eps


def gaussian_kl(mean, logvar):
  """KL(N(mean, diag exp(logvar)) || N(0, I)) per dimension (not summed).

  KL_j = 1/2 (sigma_j^2 + mean_j^2 - 1 - log sigma_j^2), with
  sigma^2 - 1 computed as expm1(logvar) so that it stays >= 0 in float32
  when logvar is near 0.
  """
  return 0.5 * (jnp.expm1(logvar) - logvar + jnp.square(mean))


def gaussian_log_prob(z, mean, logvar):
  """log N(z; mean, diag exp(logvar)), summed over the last axis."""
  log_density = -0.5 * (
      LOG_2PI + logvar + jnp.square(z - mean) * jnp.exp(-logvar))
  return jnp.sum(log_density, axis=-1)


def standard_normal_log_prob(z):
  """log N(z; 0, I), summed over the last axis."""
  return jnp.sum(-0.5 * (LOG_2PI + jnp.square(z)), axis=-1)


def residual_gaussian_kl(delta_mean, delta_logvar, prior_logvar):
  """KL(N(m_p + delta_mean, v_p exp(delta_logvar)) || N(m_p, v_p)) per
  element, for a posterior parameterised relative to its prior (NVAE):

    1/2 (delta_mean^2 / v_p + exp(delta_logvar) - 1 - delta_logvar),

  which does not depend on m_p and is exactly zero when q copies p;
  exp(delta_logvar) - 1 as expm1 for accuracy near zero.
  """
  return 0.5 * (jnp.square(delta_mean) * jnp.exp(-prior_logvar)
                + jnp.expm1(delta_logvar) - delta_logvar)
