"""VAE objectives: the ELBO (with beta, KL warm-up and free bits), the IWAE
bound (Burda et al., 2016), and the chunked IWAE estimate of log p(x).

Every objective returned by a `make_*` function has the shared signature

    loss_fn(model, variables, batch, keys, step, train)
        -> (per_example_loss [B], metrics {name: [B] or scalar}, model_state)

where `batch['inputs']` holds the transformed images [B, H, W, C], `keys` one
PRNG key per example (so results do not depend on how the batch is split
across devices) and `model_state` the updated non-parameter collections
(empty for these models). The train step takes the mean over examples.
"""
import math

import jax
import jax.numpy as jnp
from jax import lax

from vaejax.objectives import distributions
from vaejax.objectives import likelihoods


def kl_weight(step, beta, warmup_steps):
  """beta, linearly annealed from 0 over `warmup_steps` (KL warm-up)."""
  if not warmup_steps:
    return jnp.asarray(beta, jnp.float32)
  return beta * jnp.minimum(
      1.0, jnp.asarray(step, jnp.float32) / warmup_steps)


def elbo_loss_and_metrics(log_px_given_z, kl, kl_penalty, weight):
  """The (beta-, warmed-up, free-bits) ELBO loss
  -log p(x|z) + weight * kl_penalty and the metrics every VAE objective
  reports (all [B]): elbo, reconstruction_nll, kl, kl_weight."""
  loss = -log_px_given_z + weight * kl_penalty
  return loss, {
      'elbo': log_px_given_z - kl,
      'reconstruction_nll': -log_px_given_z,
      'kl': kl,
      'kl_weight': weight,
  }


def encode_and_sample(model, variables, x, keys, num_samples):
  """q(z|x) parameters and `num_samples` reparameterised codes per example."""
  mean, logvar = model.apply(variables, x, method=model.encode)
  z = jax.vmap(distributions.reparameterize, in_axes=(0, 0, 0, None))(
      keys, mean, logvar, num_samples)
  return mean, logvar, z


def decode_samples(model, variables, z):
  """Decodes codes [B, S, d] to likelihood parameters [B, S, H, W, C']."""
  batch, samples, dim = z.shape
  params = model.apply(variables, z.reshape(batch * samples, dim),
                       method=model.decode)
  return params.reshape(batch, samples, *params.shape[1:])


def log_importance_weights(model, variables, likelihood, x, keys, num_samples):
  """log p(x, z_i) - log q(z_i | x) for `num_samples` z_i ~ q per example."""
  mean, logvar, z = encode_and_sample(model, variables, x, keys, num_samples)
  log_px_given_z = likelihood.log_prob(
      decode_samples(model, variables, z), x[:, None])
  log_pz = distributions.standard_normal_log_prob(z)
  log_qz = distributions.gaussian_log_prob(z, mean[:, None], logvar[:, None])
  return log_px_given_z + log_pz - log_qz


def iwae_bound(log_weights):
  """L_k = logsumexp_i(log w_i) - log k over the last axis."""
  k = log_weights.shape[-1]
  return jax.nn.logsumexp(log_weights, axis=-1) - math.log(k)


def chunked_log_mean_exp(log_weights_fn, x, keys, num_samples, chunk_size):
  """log (1/k) sum_i w_i [B] with k = num_samples log weights drawn by
  `log_weights_fn(chunk_keys [B], chunk_size) -> [B, chunk_size]` in chunks.

  Chunk c uses keys fold_in(key, c); the chunks' logsumexps are combined
  exactly, so the result equals the one-shot L_k on the same samples while
  holding only `chunk_size` samples per example at a time.
  """
  if num_samples % chunk_size:
    raise ValueError(
        f'config.eval.iwae_samples={num_samples} must be a multiple of '
        f'config.eval.iwae_chunk={chunk_size}.')

  def add_chunk(running, c):
    chunk_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, c)
    log_weights = log_weights_fn(chunk_keys, chunk_size)
    return jnp.logaddexp(running, jax.nn.logsumexp(log_weights, -1)), None

  # Derived from x so that, under shard_map, the carry varies over devices
  # like the per-example values added to it.
  initial = jnp.full_like(x.reshape(x.shape[0], -1)[:, 0], -jnp.inf)
  total, _ = lax.scan(add_chunk, initial, jnp.arange(num_samples // chunk_size))
  return total - math.log(num_samples)


def iwae_log_likelihood(model, variables, likelihood, x, keys, num_samples,
                        chunk_size):
  """log p(x) [B] estimated by L_k with k = num_samples, in chunks of samples
  (`chunked_log_mean_exp`)."""
  return chunked_log_mean_exp(
      lambda chunk_keys, size: log_importance_weights(
          model, variables, likelihood, x, chunk_keys, size),
      x, keys, num_samples, chunk_size)


def make_elbo(config):
  """Negative ELBO with beta, KL warm-up and per-dimension free bits.

  loss = -E_q[log p(x|z)] + beta_t * sum_j max(KL_j, free_bits), with
  E_q estimated by `num_samples` reparameterised samples. The metric `elbo`
  is always the plain ELBO (beta = 1, no free bits), the number reported.
  Free bits are applied per example and dimension, so the loss does not
  depend on how a batch is split over devices.
  """
  likelihood = likelihoods.get_likelihood(config)
  beta = config.beta
  warmup_steps = config.kl_warmup_steps
  free_bits = config.free_bits
  num_samples = config.num_samples

  def loss_fn(model, variables, batch, keys, step, train):
    del train
    x = batch['inputs']
    mean, logvar, z = encode_and_sample(model, variables, x, keys, num_samples)
    log_px_given_z = jnp.mean(
        likelihood.log_prob(decode_samples(model, variables, z), x[:, None]),
        axis=1)
    kl_per_dim = distributions.gaussian_kl(mean, logvar)
    kl = jnp.sum(kl_per_dim, axis=-1)
    kl_penalty = jnp.sum(jnp.maximum(kl_per_dim, free_bits), axis=-1)
    weight = kl_weight(step, beta, warmup_steps)
    return (*elbo_loss_and_metrics(log_px_given_z, kl, kl_penalty, weight),
            {})

  return loss_fn


def make_iwae(config):
  """Negative IWAE bound with k = `config.iwae_samples` importance samples."""
  likelihood = likelihoods.get_likelihood(config)
  k = config.iwae_samples

  def loss_fn(model, variables, batch, keys, step, train):
    del step, train
    x = batch['inputs']
    log_weights = log_importance_weights(
        model, variables, likelihood, x, keys, k)
    bound = iwae_bound(log_weights)
    # The ELBO from the same samples: the mean of the log weights.
    metrics = {'iwae_bound': bound, 'elbo': jnp.mean(log_weights, axis=-1)}
    return -bound, metrics, {}

  return loss_fn
