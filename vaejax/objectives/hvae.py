"""Objectives of top-down hierarchical VAEs (`vaejax.models.hvae`): the ELBO
with the KL of each group of latents, and the IWAE estimate of log p(x)
over all groups.

A pass of the model returns, per group l, the sample z_l and the
parameters of p(z_l | z_<l) and of q(z_l | x, z_<l) = N(mean_p +
delta_mean, var_p exp(delta_logvar)). The ELBO uses each group's KL in
closed form given the samples above it
(`distributions.residual_gaussian_kl`);
the importance weights use every group's log densities at its sample,

  log w = log p(x | z) + sum_l [log p(z_l | z_<l) - log q(z_l | x, z_<l)],

because only the sampled densities, not the analytic KL, make
(1/k) sum_i w_i an unbiased estimate of p(x).

Loss functions have the shared signature of `vaejax.objectives.vae`.
"""
import jax
import jax.numpy as jnp

from vaejax.objectives import distributions
from vaejax.objectives import likelihoods
from vaejax.objectives import vae as vae_objectives


def flat(a):
  return a.reshape(a.shape[0], -1)


def group_kl(group):
  """KL(q(z_l | x, z_<l) || p(z_l | z_<l)) per latent element [N, d_l]."""
  return flat(distributions.residual_gaussian_kl(
      group['delta_mean'], group['delta_logvar'], group['prior_logvar']))


def group_log_ratio(group):
  """log p(z_l | z_<l) - log q(z_l | x, z_<l) at the group's sample [N]."""
  z, prior_mean, prior_logvar = (flat(group[k]) for k in
                                 ('z', 'prior_mean', 'prior_logvar'))
  log_p = distributions.gaussian_log_prob(z, prior_mean, prior_logvar)
  log_q = distributions.gaussian_log_prob(
      z, prior_mean + flat(group['delta_mean']),
      prior_logvar + flat(group['delta_logvar']))
  return log_p - log_q


def sample_keys(keys, num_samples):
  """[B, num_samples] keys: `num_samples` from each example's key."""
  return jax.vmap(lambda key: jax.random.split(key, num_samples))(keys)


def log_importance_weights(model, variables, likelihood, x, keys,
                           num_samples):
  """log p(x, z_i) - log q(z_i | x) [B, num_samples], z_i ~ q over all
  groups."""
  params, groups = model.apply(variables, x, sample_keys(keys, num_samples),
                               method=model.posterior)
  x_rows = jnp.repeat(x, num_samples, axis=0)
  log_w = likelihood.log_prob(params, x_rows) + sum(
      group_log_ratio(group) for group in groups)
  return log_w.reshape(x.shape[0], num_samples)


def iwae_log_likelihood(model, variables, likelihood, x, keys, num_samples,
                        chunk_size):
  """log p(x) [B] estimated by L_k with k = num_samples, in chunks
  (`vae.chunked_log_mean_exp`)."""
  return vae_objectives.chunked_log_mean_exp(
      lambda chunk_keys, size: log_importance_weights(
          model, variables, likelihood, x, chunk_keys, size),
      x, keys, num_samples, chunk_size)


def make_hvae_elbo(config):
  """Negative ELBO of a top-down VAE, with beta, KL warm-up and free bits.

  loss = -E_q[log p(x|z)] + beta_t sum_l sum_j max(KL_lj, free_bits), with
  `num_samples` posterior samples per example; free bits apply per latent
  element of each group. Metrics: the plain ELBO (beta = 1, no free bits),
  the reconstruction term, the total KL and the KL of each group
  (`kl_group_<l>`, top group 0), in nats per example.
  """
  likelihood = likelihoods.get_likelihood(config)
  beta = config.beta
  warmup_steps = config.kl_warmup_steps
  free_bits = config.free_bits
  num_samples = config.num_samples

  def loss_fn(model, variables, batch, keys, step, train):
    del train
    x = batch['inputs']
    batch_size = x.shape[0]
    params, groups = model.apply(
        variables, x, sample_keys(keys, num_samples), method=model.posterior)

    def per_example(values):  # [B * S] -> [B], the mean over samples
      return jnp.mean(values.reshape(batch_size, num_samples), axis=1)

    log_px_given_z = per_example(
        likelihood.log_prob(params, jnp.repeat(x, num_samples, axis=0)))
    kls = [group_kl(group) for group in groups]
    group_kls = [per_example(jnp.sum(kl, -1)) for kl in kls]
    kl_penalty = per_example(sum(
        jnp.sum(jnp.maximum(kl, free_bits), -1) for kl in kls))
    kl = sum(group_kls)
    weight = vae_objectives.kl_weight(step, beta, warmup_steps)
    loss, metrics = vae_objectives.elbo_loss_and_metrics(
        log_px_given_z, kl, kl_penalty, weight)
    metrics.update({f'kl_group_{l}': value
                    for l, value in enumerate(group_kls)})
    return loss, metrics, {}

  return loss_fn
