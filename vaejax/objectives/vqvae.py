"""VQ-VAE objective: reconstruction + codebook + commitment terms, or EMA
codebook updates with dead-code restarts (van den Oord et al. 2017).

    loss = -log p(x | z_q(x)) + sum_positions ||sg[z_e] - e||^2
           + beta * sum_positions ||z_e - sg[e]||^2

The KL term to a uniform prior over the K codes is the constant
h * w * log K and is left out of the loss (it is in the VQ-VAE family's
`log_likelihood_bound`).

With the EMA codebook (the model keeps its codebook statistics in the
non-parameter collection EMA_COLLECTION, `models.vector_quantizer`) the
codebook term is dropped and each train step returns new statistics
(paper, appendix A.1):

    N_k <- gamma N_k + (1 - gamma) n_k,
    m_k <- gamma m_k + (1 - gamma) sum_{i: k(i) = k} z_e,i,
    e_k  = m_k / N~_k,  N~_k = (N_k + eps) / (sum_j N_j + K eps) sum_j N_j,

with n_k and the sums taken as means over the batch's positions: the train
loop's mean over devices then pools them exactly, so the codebook is the
same on any number of devices. Codes whose N_k falls below
`restart_below / K` are restarted at encoder outputs of the current global
batch, chosen with the key of the batch's first example; with
`init_codebook_from_data` every code is restarted in step 0 (a codebook
initialised from encoder outputs).

Metrics: recon_nll (nats), recon_mse, commitment, perplexity of the batch's
code use (K for uniform use, 1 for one code), codes_used (fraction of the K
codes the batch uses), codes_restarted.
"""
import jax
import jax.numpy as jnp
from jax import lax

from vaejax import errors
from vaejax import sharding
from vaejax.objectives import likelihoods
from vaejax.objectives import mixture

# The collection of the EMA codebook statistics ('counts', 'sums').
EMA_COLLECTION = 'codebook_ema'
# The VQ-VAE's quantiser submodule, whose statistics the collection holds.
QUANTIZER = 'quantizer'
CODEBOOK_UPDATES = ('loss', 'ema')


def smoothed_codebook(counts, sums, epsilon):
  """e_k = m_k / N~_k with N~_k = (N_k + eps) / (sum N + K eps) * sum N."""
  total = jnp.sum(counts)
  smoothed = (counts + epsilon) / (total + counts.shape[0] * epsilon) * total
  return sums / smoothed[:, None]


def code_usage(codes, num_codes):
  """p-bar [K]: the fraction of the positions of `codes` using each code."""
  one_hot = jax.nn.one_hot(codes.reshape(-1), num_codes, dtype=jnp.float32)
  return jnp.mean(one_hot, axis=0)


def code_sums(z_e, codes, num_codes):
  """[K, D]: sum of the z_e assigned to each code, over the number of
  positions (a mean, so it averages over devices)."""
  flat_z = z_e.reshape(-1, z_e.shape[-1])
  one_hot = jax.nn.one_hot(codes.reshape(-1), num_codes, dtype=flat_z.dtype)
  return one_hot.T @ flat_z / flat_z.shape[0]


def perplexity(usage):
  """exp(-sum_k p_k log p_k) of a code-use distribution p [K]."""
  entropy = -jnp.sum(jnp.where(usage > 0, usage * jnp.log(
      jnp.where(usage > 0, usage, 1.0)), 0.0))
  return jnp.exp(entropy)


def ema_update(counts, sums, usage, assigned_sums, decay):
  """(N, m) after one step: gamma * old + (1 - gamma) * batch statistic."""
  return (decay * counts + (1.0 - decay) * usage,
          decay * sums + (1.0 - decay) * assigned_sums)


def restart_dead_codes(key, counts, sums, candidates, dead, epsilon):
  """Codes with `dead` [K] set to random rows of `candidates` [N, D].

  A restarted code gets the count of uniform use (1/K) and the sum that
  makes its smoothed codebook vector exactly the chosen candidate; the
  other codes keep their statistics (their vectors change only through the
  smoothing's normaliser). Returns (counts, sums).
  """
  num_codes = counts.shape[0]
  chosen = candidates[jax.random.randint(key, (num_codes,), 0,
                                         candidates.shape[0])]
  counts = jnp.where(dead, 1.0 / num_codes, counts)
  total = jnp.sum(counts)
  smoothed = (counts + epsilon) / (total + num_codes * epsilon) * total
  sums = jnp.where(dead[:, None], chosen * smoothed[:, None], sums)
  return counts, sums


def make_vqvae(config):
  """The VQ-VAE loss; `config` is config.objective (likelihood keys,
  commitment_cost, codebook_decay, restart_below, init_codebook_from_data).
  """
  likelihood = likelihoods.get_likelihood(config)
  beta = config.commitment_cost
  decay = config.codebook_decay
  restart_below = config.restart_below
  init_from_data = config.init_codebook_from_data
  if not 0.0 < decay < 1.0:
    raise errors.ConfigError(
        f'config.objective.codebook_decay={decay} must be in (0, 1).')

  def loss_fn(model, variables, batch, keys, step, train):
    x = batch['inputs']
    out = model.apply(variables, x)
    quantizer = model.quantizer
    num_codes = quantizer.num_codes
    ema = EMA_COLLECTION in variables
    recon_nll = -likelihood.log_prob(out['output'], x)

    def per_example(term):
      return jnp.sum(term.reshape(term.shape[0], -1), axis=-1)

    commitment = per_example(out['commitment_loss'])
    loss = recon_nll + beta * commitment
    if not ema:
      loss = loss + per_example(out['codebook_loss'])
    usage = code_usage(out['codes'], num_codes)
    reconstruction = likelihood.mean(out['output'])
    metrics = {
        'recon_nll': recon_nll,
        'recon_mse': jnp.mean(jnp.square(reconstruction - x).reshape(
            x.shape[0], -1), axis=-1),
        'commitment': commitment,
        'perplexity': perplexity(usage),
        'codes_used': jnp.mean((usage > 0).astype(jnp.float32)),
    }
    if not (ema and train):
      return loss, metrics, {}
    stats = variables[EMA_COLLECTION][QUANTIZER]
    counts, sums = ema_update(stats['counts'], stats['sums'], usage,
                              code_sums(out['z_e'], out['codes'], num_codes),
                              decay)
    # Statistics of the global batch (means over equal device shares), so
    # the restart decision and its candidates agree on every device.
    global_counts = lax.pmean(counts, sharding.DATA_AXIS)
    dead = global_counts < restart_below / num_codes
    if init_from_data:
      dead = dead | (step == 0)
    candidates = mixture.global_batch(
        out['z_e'].reshape(-1, out['z_e'].shape[-1]))
    counts, sums = restart_dead_codes(
        mixture.first_example_key(keys), global_counts,
        lax.pmean(sums, sharding.DATA_AXIS), candidates, dead,
        quantizer.ema_epsilon)
    metrics['codes_restarted'] = jnp.sum(dead.astype(jnp.float32))
    return loss, metrics, {EMA_COLLECTION: {QUANTIZER: {'counts': counts,
                                                      'sums': sums}}}

  return loss_fn
