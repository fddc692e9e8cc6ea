"""Tests for vaejax.objectives: KL, reparameterisation, likelihoods, ELBO, IWAE.

Checks are analytic: closed forms against Monte-Carlo estimates and scipy,
and a linear-Gaussian model (probabilistic PCA) whose log p(x) is known.
"""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.special
import scipy.stats

from vaejax.models import vae as vae_models
from vaejax.objectives import distributions
from vaejax.objectives import likelihoods
from vaejax.objectives import vae as vae_objectives
from vaejax.configs import loading

# (mean, logvar) pairs of 3-D diagonal Gaussians, from near the prior to far.
GAUSSIANS = (
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ((0.5, -1.0, 2.0), (0.3, -0.7, 1.2)),
    ((-3.0, 0.1, 1.0), (-3.0, 2.0, -0.1)),
)


def objective_config(**fields):
  """The objective block of experiments/vae.py with `fields` changed."""
  config = ml_collections.ConfigDict(
      loading.load_config('experiments/vae.py').objective.to_dict())
  config.update(fields)
  return config

def vae_model_config(**fields):
  """The model block of experiments/vae.py with `fields` changed."""
  config = ml_collections.ConfigDict(
      loading.load_config('experiments/vae.py').model.to_dict())
  config.update(fields)
  return config



def per_example_keys(seed, num_examples):
  return jax.random.split(jax.random.key(seed), num_examples)


def mean_and_standard_error(values):
  values = np.asarray(values, np.float64)
  return values.mean(), values.std(ddof=1) / math.sqrt(values.size)


# --- Gaussian latents -------------------------------------------------------


@pytest.mark.parametrize('mean, logvar', GAUSSIANS)
def test_gaussian_kl_matches_monte_carlo(mean, logvar):
  mean, logvar = np.array(mean), np.array(logvar)
  std = np.exp(0.5 * logvar)
  rng = np.random.default_rng(0)
  z = mean + std * rng.standard_normal((200_000, 3))
  log_q = scipy.stats.norm.logpdf(z, mean, std).sum(-1)
  log_p = scipy.stats.norm.logpdf(z).sum(-1)
  estimate, standard_error = mean_and_standard_error(log_q - log_p)

  kl = jnp.sum(distributions.gaussian_kl(jnp.asarray(mean, jnp.float32),
                                         jnp.asarray(logvar, jnp.float32)))

  assert abs(float(kl) - estimate) <= 4 * standard_error + 1e-6


def test_gaussian_kl_is_zero_at_the_prior_and_nonnegative():
  chex.assert_trees_all_equal(
      distributions.gaussian_kl(jnp.zeros(5), jnp.zeros(5)), jnp.zeros(5))
  mean = jax.random.uniform(jax.random.key(0), (10_000,), minval=-5, maxval=5)
  logvar = jax.random.uniform(jax.random.key(1), (10_000,), minval=-10,
                              maxval=10)
  kl = distributions.gaussian_kl(mean, logvar)
  assert bool(jnp.all(kl >= 0.0))
  # Per-dimension values, not summed.
  expected = 0.5 * (np.exp(logvar) + np.square(mean) - 1.0 - logvar)
  chex.assert_trees_all_close(kl, expected, rtol=1e-5, atol=1e-5)


def test_gaussian_kl_is_accurate_near_the_prior():
  logvar = jnp.linspace(-1e-2, 1e-2, 2001, dtype=jnp.float32)
  kl = distributions.gaussian_kl(jnp.zeros_like(logvar), logvar)
  logvar64 = np.asarray(logvar, np.float64)
  expected = 0.5 * (np.expm1(logvar64) - logvar64)
  assert bool(jnp.all(kl >= 0.0))
  np.testing.assert_allclose(kl, expected, rtol=1e-2, atol=1e-10)


@pytest.mark.parametrize('mean, logvar', GAUSSIANS)
def test_gaussian_log_probs_match_scipy(mean, logvar):
  mean, logvar = np.array(mean), np.array(logvar)
  z = np.random.default_rng(1).normal(size=(7, 3)) * 2.0
  expected = scipy.stats.norm.logpdf(z, mean, np.exp(0.5 * logvar)).sum(-1)
  chex.assert_trees_all_close(
      distributions.gaussian_log_prob(jnp.asarray(z, jnp.float32),
                                      jnp.asarray(mean, jnp.float32),
                                      jnp.asarray(logvar, jnp.float32)),
      expected, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(
      distributions.standard_normal_log_prob(jnp.asarray(z, jnp.float32)),
      scipy.stats.norm.logpdf(z).sum(-1), rtol=1e-5, atol=1e-5)


def test_reparameterize_draws_from_the_gaussian():
  mean = jnp.array([1.0, -2.0, 0.0])
  logvar = jnp.array([0.0, 1.0, -2.0])
  z = distributions.reparameterize(jax.random.key(0), mean, logvar, 100_000)
  chex.assert_shape(z, (100_000, 3))
  chex.assert_shape(
      distributions.reparameterize(jax.random.key(0), mean, logvar), (3,))
  std = np.exp(0.5 * np.asarray(logvar))
  assert np.all(np.abs(z.mean(0) - mean) < 4 * std / math.sqrt(1e5))
  np.testing.assert_allclose(z.std(0), std, rtol=0.01)


def test_reparameterization_gradient_of_second_moment():
  """d/dmu E[z^2] = 2 mu, d/dlogvar E[z^2] = sigma^2 (E[z^2] = mu^2 + s^2)."""
  mean = jnp.array([0.5, -1.0, 2.0, 0.0])
  logvar = jnp.array([0.0, 0.5, -1.0, 1.0])
  num_samples = 200_000
  key = jax.random.key(3)

  def second_moment(mean, logvar):
    z = distributions.reparameterize(key, mean, logvar, num_samples)
    return jnp.sum(jnp.mean(jnp.square(z), axis=0))

  grad_mean, grad_logvar = jax.grad(second_moment, argnums=(0, 1))(
      mean, logvar)

  variance = np.exp(np.asarray(logvar))
  std = np.sqrt(variance)
  # Standard deviations of one sample of each gradient: 2 z for the mean,
  # sigma eps z for the log-variance.
  tolerance = 5 * np.sqrt(
      np.array([4 * variance,
                variance * (np.asarray(mean)**2 + 2 * variance)])
      / num_samples)
  assert np.all(np.abs(grad_mean - 2 * np.asarray(mean)) < tolerance[0])
  assert np.all(np.abs(grad_logvar - variance) < tolerance[1])
  # Given the noise, the pathwise gradient is exact.
  eps = jax.random.normal(key, (num_samples, 4))
  z = mean + std * eps
  chex.assert_trees_all_close(grad_mean, jnp.mean(2 * z, 0), rtol=1e-4,
                              atol=1e-5)
  chex.assert_trees_all_close(grad_logvar, jnp.mean(z * std * eps, 0),
                              rtol=1e-4, atol=1e-5)


# --- Likelihoods ------------------------------------------------------------


def test_bernoulli_matches_scipy_and_the_naive_formula():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 2, 1000).astype(np.float32)
  logits = rng.uniform(-8, 8, 1000).astype(np.float32)
  log_prob = likelihoods.log_likelihood_bernoulli(x, logits)
  probability = scipy.special.expit(logits.astype(np.float64))
  chex.assert_trees_all_close(
      log_prob, scipy.stats.bernoulli.logpmf(x, probability), rtol=1e-5,
      atol=1e-5)
  # Also for intensities in [0, 1] (continuous Bernoulli-style targets).
  x = rng.uniform(size=1000).astype(np.float32)
  naive = (x * np.log(probability) + (1 - x) * np.log1p(-probability))
  chex.assert_trees_all_close(
      likelihoods.log_likelihood_bernoulli(x, logits), naive, rtol=1e-5,
      atol=1e-5)


def test_bernoulli_is_finite_for_extreme_logits():
  x = jnp.array([1.0, 0.0, 1.0, 0.0])
  logits = jnp.array([1e4, 1e4, -1e4, -1e4])
  log_prob = likelihoods.log_likelihood_bernoulli(x, logits)
  chex.assert_tree_all_finite(log_prob)
  chex.assert_trees_all_close(log_prob, jnp.array([0.0, -1e4, -1e4, 0.0]))
  grads = jax.grad(lambda l: jnp.sum(
      likelihoods.log_likelihood_bernoulli(x, l)))(logits)
  chex.assert_tree_all_finite(grads)


def test_gaussian_and_laplace_match_scipy():
  rng = np.random.default_rng(1)
  x, loc = rng.normal(size=(2, 500))
  log_scale = rng.uniform(-4, 2, 500)
  args = [jnp.asarray(a, jnp.float32) for a in (x, loc, log_scale)]
  chex.assert_trees_all_close(
      likelihoods.log_likelihood_gaussian(*args),
      scipy.stats.norm.logpdf(x, loc, np.exp(log_scale)), rtol=1e-5,
      atol=1e-4)
  chex.assert_trees_all_close(
      likelihoods.log_likelihood_laplace(*args),
      scipy.stats.laplace.logpdf(x, loc, np.exp(log_scale)), rtol=1e-5,
      atol=1e-4)


def discretized_logistic_reference(x, loc, scale, num_bins=256):
  """float64 log P(bin of x) from logistic CDF differences (edge bins take
  the tails); `scale` is the scale in [-1, 1] coordinates as in vaejax."""
  x, loc = np.asarray(x, np.float64), np.asarray(loc, np.float64)
  scale = np.asarray(scale, np.float64) / 2  # In [0, 1] coordinates.
  index = np.round(x * (num_bins - 1))
  half_bin = 0.5 / (num_bins - 1)
  upper = np.where(index == num_bins - 1, np.inf, x + half_bin)
  lower = np.where(index == 0, -np.inf, x - half_bin)
  logistic = scipy.stats.logistic
  # Each difference on whichever tail keeps its precision; log(0) = -inf in
  # the branch np.where drops.
  with np.errstate(divide='ignore'):
    return np.where(
        lower > loc,
        np.log(logistic.sf(lower, loc, scale)
               - logistic.sf(upper, loc, scale)),
        np.log(logistic.cdf(upper, loc, scale)
               - logistic.cdf(lower, loc, scale)))


@pytest.mark.parametrize('loc, log_scale', [
    (0.5, -7.0),  # The smallest scale the likelihood allows by default.
    (127 / 255, -7.0),  # Centred on a bin.
    (0.3, -3.0),
    (0.0, -2.0),
    (1.0, -5.0),
    (0.7, 0.0),
    (0.5, 3.0),  # Wider than [0, 1]: mass piles up in the edge bins.
    (1.5, -1.0),  # Outside [0, 1].
])
def test_discretized_logistic_is_a_distribution_over_bins(loc, log_scale):
  bins = jnp.arange(256, dtype=jnp.float32) / 255
  log_prob = likelihoods.log_likelihood_discretized_logistic(
      bins, jnp.float32(loc), jnp.float32(log_scale))
  chex.assert_tree_all_finite(log_prob)
  assert bool(jnp.all(log_prob <= 0.0))
  np.testing.assert_allclose(jnp.sum(jnp.exp(log_prob)), 1.0, rtol=1e-5)
  expected = discretized_logistic_reference(bins, loc, math.exp(log_scale))
  np.testing.assert_allclose(jnp.exp(log_prob), np.exp(expected), rtol=1e-4,
                             atol=1e-7)
  # Log-probabilities of bins with non-negligible mass, to relative accuracy.
  likely = expected > -60
  np.testing.assert_allclose(np.asarray(log_prob)[likely], expected[likely],
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('num_bins, log_scale', [(256, -12.0), (16, -7.0)])
def test_discretized_logistic_tiny_scales(num_bins, log_scale):
  bins = jnp.arange(num_bins, dtype=jnp.float32) / (num_bins - 1)
  loc = bins[num_bins // 3]
  log_prob = likelihoods.log_likelihood_discretized_logistic(
      bins, loc, jnp.float32(log_scale), num_bins)
  assert bool(jnp.all(log_prob <= 0.0))
  np.testing.assert_allclose(jnp.sum(jnp.exp(log_prob)), 1.0, rtol=1e-5)
  np.testing.assert_allclose(log_prob[num_bins // 3], 0.0, atol=1e-5)


def test_discretized_logistic_sums_to_one_for_many_bins():
  bins = jnp.arange(4096, dtype=jnp.float32) / 4095
  log_prob = likelihoods.log_likelihood_discretized_logistic(
      bins, jnp.float32(0.5), jnp.float32(0.0), 4096)
  np.testing.assert_allclose(jnp.sum(jnp.exp(log_prob)), 1.0, rtol=1e-4)


@pytest.mark.parametrize('num_bins', [2, 16])
def test_discretized_logistic_other_bin_counts(num_bins):
  bins = jnp.arange(num_bins, dtype=jnp.float32) / (num_bins - 1)
  log_prob = likelihoods.log_likelihood_discretized_logistic(
      bins, jnp.float32(0.4), jnp.float32(-2.0), num_bins)
  np.testing.assert_allclose(
      log_prob, discretized_logistic_reference(bins, 0.4, math.exp(-2.0),
                                               num_bins), rtol=1e-5,
      atol=1e-6)


@pytest.mark.parametrize('name', ['bernoulli', 'gaussian', 'gaussian_learned',
                                  'laplace', 'laplace_learned',
                                  'discretized_logistic'])
def test_likelihood_log_prob_sums_pixels_and_broadcasts_samples(name):
  likelihood = likelihoods.get_likelihood(objective_config(
      likelihood=name, likelihood_scale=0.3, min_log_scale=-2.0))
  batch, samples, height, width, channels = 2, 3, 4, 5, 3
  num_params = likelihood.num_params
  rng = np.random.default_rng(0)
  params = rng.normal(size=(batch, samples, height, width,
                            channels * num_params)).astype(np.float32)
  # Some raw log-scales below the floor of -2, which the likelihood clamps.
  params[..., channels:] -= 1.0
  if name == 'bernoulli':
    x = rng.integers(0, 2, (batch, height, width, channels))
  else:
    x = rng.integers(0, 256, (batch, height, width, channels)) / 255
  x = x.astype(np.float32)

  log_prob = likelihood.log_prob(jnp.asarray(params), jnp.asarray(x)[:, None])

  chex.assert_shape(log_prob, (batch, samples))
  # Channels [i * C, (i + 1) * C) hold parameter i of the C image channels.
  params = params.astype(np.float64)
  loc = params[..., :channels]
  scale = (0.3 if num_params == 1
           else np.exp(np.maximum(params[..., channels:], -2.0)))
  x = np.broadcast_to(x[:, None], loc.shape).astype(np.float64)
  if name == 'bernoulli':
    density = scipy.stats.bernoulli.logpmf(x, scipy.special.expit(loc))
  elif name.startswith('gaussian'):
    density = scipy.stats.norm.logpdf(x, loc, scale)
  elif name.startswith('laplace'):
    density = scipy.stats.laplace.logpdf(x, loc, scale)
  else:
    density = discretized_logistic_reference(x, loc, scale)
  chex.assert_trees_all_close(log_prob, density.sum((-3, -2, -1)),
                              rtol=1e-5, atol=1e-3)


def test_likelihood_means():
  params = jnp.array([-2.0, 0.0, 0.5, 1.5, -3.0, 0.0, 1.0, 2.0]).reshape(
      1, 1, 1, 8)
  bernoulli = likelihoods.get_likelihood(objective_config())
  chex.assert_trees_all_close(bernoulli.mean(params), jax.nn.sigmoid(params))
  logistic = likelihoods.get_likelihood(
      objective_config(likelihood='discretized_logistic'))
  chex.assert_trees_all_close(logistic.mean(params),
                              jnp.array([0.0, 0.0, 0.5, 1.0]).reshape(
                                  1, 1, 1, 4))
  gaussian = likelihoods.get_likelihood(
      objective_config(likelihood='gaussian_learned'))
  chex.assert_trees_all_close(gaussian.mean(params), params[..., :4])


def test_unknown_likelihood_lists_known_names():
  with pytest.raises(KeyError) as error:
    likelihoods.get_likelihood(ml_collections.ConfigDict(
        dict(likelihood='nope')))
  message = str(error.value)
  assert "'nope'" in message
  for name in likelihoods.LIKELIHOODS.names():
    assert name in message
  assert {'bernoulli', 'gaussian', 'gaussian_learned', 'laplace',
          'laplace_learned', 'discretized_logistic'} <= set(
              likelihoods.LIKELIHOODS.names())


# --- ELBO and IWAE on a small MLP VAE ---------------------------------------
# Each test runs its model code inside one jax.jit: on CPU, compiling one
# program is several times faster than dispatching the ops one by one.

IMAGE_SHAPE = (8, 8, 1)


@pytest.fixture(scope='module')
def mlp_setup():
  """A randomly initialised 64-32-4 MLP VAE, its variables and binary data."""
  likelihood = likelihoods.get_likelihood(objective_config())
  model = vae_models.mlp_vae(
      vae_model_config(hidden_sizes=(32,), latent_dim=4),
      IMAGE_SHAPE, likelihood).model
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((256, *IMAGE_SHAPE)) < 0.3, jnp.float32)
  # Normal kernels at twice nn.Dense's LeCun scale, so that q(z|x) is far
  # from the posterior and the IWAE bounds for different k differ clearly.
  # Drawn with numpy: compiling model.init costs more than a whole test.
  shapes = jax.eval_shape(model.init, jax.random.key(0), x[:1])
  variables = jax.tree.map(
      lambda s: jnp.asarray(
          2.0 * rng.normal(size=s.shape) / math.sqrt(s.shape[0])
          if len(s.shape) == 2 else 0.1 * rng.normal(size=s.shape),
          jnp.float32), shapes)
  return model, variables, likelihood, x


def independent_iwae_bounds(log_weights, ks):
  """L_k for each k from disjoint columns of iid log-weights [B, sum(ks)]."""
  bounds, start = {}, 0
  for k in ks:
    bounds[k] = np.asarray(vae_objectives.iwae_bound(
        log_weights[:, start:start + k]), np.float64)
    start += k
  assert start == log_weights.shape[1]
  return bounds


def test_iwae_bound_increases_with_k_and_exceeds_the_elbo(mlp_setup):
  model, variables, likelihood, x = mlp_setup
  num_examples = x.shape[0]
  ks = (1, 5, 50, 500)
  elbo_fn = vae_objectives.make_elbo(objective_config())

  @jax.jit
  def run(variables, x):
    # One call draws the samples of all four bounds: independent columns.
    log_weights = vae_objectives.log_importance_weights(
        model, variables, likelihood, x, per_example_keys(0, num_examples),
        sum(ks))
    loss, metrics, _ = elbo_fn(model, variables, {'inputs': x},
                               per_example_keys(1, num_examples),
                               jnp.asarray(0), True)
    return log_weights, loss, metrics['elbo']

  log_weights, loss, elbo = run(variables, x)
  chex.assert_shape(log_weights, (num_examples, sum(ks)))
  chex.assert_trees_all_close(loss, -elbo)
  bounds = independent_iwae_bounds(log_weights, ks)
  elbo = np.asarray(elbo, np.float64)

  # Differences on the same examples; each must be positive by > 4 SEs.
  for lower, upper in ((elbo, bounds[5]), (bounds[1], bounds[5]),
                       (bounds[5], bounds[50]), (bounds[50], bounds[500])):
    gain, standard_error = mean_and_standard_error(upper - lower)
    assert gain > 4 * standard_error, (gain, standard_error)
  # L_1 is the ELBO with a sampled KL: equal in expectation.
  difference, standard_error = mean_and_standard_error(bounds[1] - elbo)
  assert abs(difference) < 4 * standard_error, (difference, standard_error)


def test_iwae_and_elbo_objectives_agree_on_shared_samples(mlp_setup):
  """Same keys: L_1 and the ELBO share z; make_iwae's loss is -L_k."""
  model, variables, likelihood, x = mlp_setup
  x = x[:16]
  keys = per_example_keys(0, 16)
  elbo_fn = vae_objectives.make_elbo(objective_config())
  iwae_fn = vae_objectives.make_iwae(objective_config(iwae_samples=7))

  @jax.jit
  def run(variables):
    one_weight = vae_objectives.log_importance_weights(
        model, variables, likelihood, x, keys, 1)[:, 0]
    _, elbo_metrics, _ = elbo_fn(model, variables, {'inputs': x}, keys,
                                 jnp.asarray(0), True)
    mean, logvar = model.apply(variables, x, method=model.encode)
    # The draw make_elbo makes with num_samples = 1.
    z = jax.vmap(distributions.reparameterize, in_axes=(0, 0, 0, None))(
        keys, mean, logvar, 1)[:, 0]
    log_pz_over_qz = (distributions.standard_normal_log_prob(z)
                      - distributions.gaussian_log_prob(z, mean, logvar))
    iwae_loss, iwae_metrics, _ = iwae_fn(model, variables, {'inputs': x},
                                         keys, jnp.asarray(0), True)
    seven_weights = vae_objectives.log_importance_weights(
        model, variables, likelihood, x, keys, 7)
    return (one_weight, elbo_metrics, log_pz_over_qz, iwae_loss, iwae_metrics,
            seven_weights)

  (one_weight, elbo_metrics, log_pz_over_qz, iwae_loss, iwae_metrics,
   seven_weights) = run(variables)
  chex.assert_trees_all_close(
      one_weight, -elbo_metrics['reconstruction_nll'] + log_pz_over_qz,
      rtol=1e-5, atol=1e-4)
  expected = scipy.special.logsumexp(np.asarray(seven_weights, np.float64),
                                     axis=-1) - math.log(7)
  chex.assert_trees_all_close(iwae_loss, -expected, rtol=1e-5, atol=1e-4)
  chex.assert_trees_all_close(iwae_metrics['iwae_bound'], -iwae_loss)
  chex.assert_trees_all_close(iwae_metrics['elbo'],
                              jnp.mean(seven_weights, -1), rtol=1e-6,
                              atol=1e-5)


def test_elbo_beta_warmup_free_bits_and_num_samples(mlp_setup):
  model, variables, _, x = mlp_setup
  x = x[:8]
  keys = per_example_keys(0, 8)
  num_samples = 3
  # A free-bits threshold between the dimensions' KLs, so some are clamped.
  mean, logvar = jax.jit(
      lambda v: model.apply(v, x, method=model.encode))(variables)
  kl_per_dim = np.asarray(distributions.gaussian_kl(mean, logvar))
  free_bits = float(np.median(kl_per_dim))
  runs = (  # (config fields, step, expected KL weight)
      (dict(), 0, 1.0),
      (dict(beta=3.5), 0, 3.5),
      (dict(beta=2.0, kl_warmup_steps=100), 0, 0.0),
      (dict(beta=2.0, kl_warmup_steps=100), 50, 1.0),
      (dict(beta=2.0, kl_warmup_steps=100), 100, 2.0),
      (dict(beta=2.0, kl_warmup_steps=100), 10_000, 2.0),
      (dict(free_bits=free_bits), 0, 1.0),
  )
  loss_fns = [vae_objectives.make_elbo(objective_config(
      num_samples=num_samples, **fields)) for fields, _, _ in runs]

  @jax.jit
  def run_all(variables):
    # E_q log p(x|z) recomputed from the same L reparameterised samples.
    mean, logvar = model.apply(variables, x, method=model.encode)
    z = jax.vmap(distributions.reparameterize, in_axes=(0, 0, 0, None))(
        keys, mean, logvar, num_samples)
    logits = model.apply(variables, z.reshape(-1, z.shape[-1]),
                         method=model.decode).reshape(8, num_samples, -1)
    log_px = jnp.mean(jnp.sum(likelihoods.log_likelihood_bernoulli(
        x.reshape(8, 1, -1), logits), -1), -1)
    outputs = [loss_fn(model, variables, {'inputs': x}, keys,
                       jnp.asarray(step), True)
               for loss_fn, (_, step, _) in zip(loss_fns, runs)]
    return log_px, outputs

  log_px, outputs = run_all(variables)
  kl = kl_per_dim.sum(-1)
  for (fields, step, weight), (loss, metrics, state) in zip(runs, outputs):
    assert state == {}
    chex.assert_shape(loss, (8,))
    # The reported ELBO ignores beta, warm-up and free bits.
    chex.assert_trees_all_close(metrics['elbo'], log_px - kl, rtol=1e-5,
                                atol=1e-4)
    chex.assert_trees_all_close(metrics['kl'], kl, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(metrics['reconstruction_nll'], -log_px,
                                rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(metrics['kl_weight'], weight, rtol=1e-6)
    penalty = np.sum(np.maximum(kl_per_dim, fields.get('free_bits', 0.0)),
                     -1)
    chex.assert_trees_all_close(loss, -log_px + weight * penalty, rtol=1e-5,
                                atol=1e-4)
  clamped = np.sum(np.maximum(kl_per_dim, free_bits), -1)
  assert np.any(clamped > kl + 1e-3)


def test_kl_weight_schedule():
  for step, expected in ((0, 0.0), (25, 0.5), (50, 1.0), (75, 1.5),
                         (100, 2.0), (1000, 2.0)):
    np.testing.assert_allclose(
        vae_objectives.kl_weight(jnp.asarray(step), 2.0, 100), expected)
  np.testing.assert_allclose(
      vae_objectives.kl_weight(jnp.asarray(0), 2.0, 0), 2.0)


# --- Probabilistic PCA: an analytic log p(x) --------------------------------

PPCA_IMAGE_SHAPE = (2, 2, 1)
PPCA_NOISE_SCALE = 0.5
PPCA_EXAMPLES = 256


class LinearGaussianVAE(nn.Module):
  """Probabilistic PCA, x = W z + b + sigma * noise, with q(z|x) in closed form.

  With orthogonal columns of W, the exact posterior
  N(M^-1 W^T (x - b), sigma^2 M^-1), M = W^T W + sigma^2 I, is diagonal.
  The shifts make q worse than the posterior on purpose.
  """
  image_shape: tuple
  latent_dim: int
  noise_scale: float
  mean_shift: float = 0.0
  logvar_shift: float = 0.0

  def setup(self):
    data_dim = math.prod(self.image_shape)
    self.kernel = self.param('kernel', nn.initializers.zeros,
                             (data_dim, self.latent_dim))
    self.bias = self.param('bias', nn.initializers.zeros, (data_dim,))

  def encode(self, x):
    x = x.reshape(x.shape[0], -1)
    m_diagonal = jnp.sum(jnp.square(self.kernel), 0) + self.noise_scale**2
    mean = (x - self.bias) @ self.kernel / m_diagonal
    logvar = jnp.log(self.noise_scale**2 / m_diagonal)
    return (mean + self.mean_shift,
            jnp.broadcast_to(logvar + self.logvar_shift, mean.shape))

  def decode(self, z):
    x = z @ self.kernel.T + self.bias
    return x.reshape(z.shape[0], *self.image_shape)

  def __call__(self, x):
    return self.decode(self.encode(x)[0])


def ppca_model(**shifts):
  return LinearGaussianVAE(PPCA_IMAGE_SHAPE, 2, PPCA_NOISE_SCALE, **shifts)


def ppca_objective_config(**fields):
  return objective_config(likelihood='gaussian',
                          likelihood_scale=PPCA_NOISE_SCALE, **fields)


# A q(z|x) that is worse than the posterior: its mean is off by a few
# posterior standard deviations and its variance is 6 times too large.
WORSE_POSTERIOR = dict(mean_shift=1.5, logvar_shift=math.log(6.0))


@pytest.fixture(scope='module')
def ppca():
  """Orthogonal-column W, b, samples x of the model and log p(x)."""
  rng = np.random.default_rng(0)
  data_dim, latent_dim = math.prod(PPCA_IMAGE_SHAPE), 2
  columns, _ = np.linalg.qr(rng.normal(size=(data_dim, latent_dim)))
  kernel = columns * np.array([2.0, 0.8])
  bias = rng.normal(size=data_dim)
  z = rng.normal(size=(PPCA_EXAMPLES, latent_dim))
  x = (z @ kernel.T + bias
       + PPCA_NOISE_SCALE * rng.normal(size=(PPCA_EXAMPLES, data_dim)))
  covariance = kernel @ kernel.T + PPCA_NOISE_SCALE**2 * np.eye(data_dim)
  log_px = scipy.stats.multivariate_normal.logpdf(x, bias, covariance)
  variables = {'params': {'kernel': jnp.asarray(kernel, jnp.float32),
                          'bias': jnp.asarray(bias, jnp.float32)}}
  x = jnp.asarray(x.reshape(PPCA_EXAMPLES, *PPCA_IMAGE_SHAPE), jnp.float32)
  likelihood = likelihoods.get_likelihood(ppca_objective_config())
  return variables, x, log_px, likelihood, kernel


def test_ppca_exact_posterior_weights_equal_log_px(ppca):
  """log p(x, z) - log q(z|x) = log p(x) for every z when q is the posterior."""
  variables, x, log_px, likelihood, _ = ppca
  model = ppca_model()
  iwae_fn = vae_objectives.make_iwae(ppca_objective_config(iwae_samples=1))

  @jax.jit
  def run(variables):
    log_weights = vae_objectives.log_importance_weights(
        model, variables, likelihood, x, per_example_keys(0, PPCA_EXAMPLES),
        8)
    loss, _, _ = iwae_fn(model, variables, {'inputs': x},
                         per_example_keys(1, PPCA_EXAMPLES), jnp.asarray(0),
                         False)
    return log_weights, loss

  log_weights, loss = run(variables)
  tolerance = 2e-5 * np.abs(log_px).max()
  chex.assert_trees_all_close(
      log_weights, np.broadcast_to(log_px[:, None], (PPCA_EXAMPLES, 8)),
      atol=tolerance)
  chex.assert_trees_all_close(loss, -log_px, atol=tolerance)


def test_ppca_elbo_with_exact_posterior_equals_log_px(ppca):
  variables, x, log_px, likelihood, kernel = ppca
  model = ppca_model()
  num_samples, num_examples = 4096, 8
  elbo_fn = vae_objectives.make_elbo(ppca_objective_config(
      num_samples=num_samples))

  @jax.jit
  def run(variables):
    mean, logvar = model.apply(variables, x, method=model.encode)
    decoded_mean = model.apply(variables, mean, method=model.decode)
    log_px_at_mean = jnp.sum(likelihood.log_density(
        x.reshape(PPCA_EXAMPLES, -1), decoded_mean.reshape(PPCA_EXAMPLES, -1)),
                             -1)
    kl = jnp.sum(distributions.gaussian_kl(mean, logvar), -1)
    loss, metrics, _ = elbo_fn(model, variables, {'inputs': x[:num_examples]},
                               per_example_keys(2, num_examples),
                               jnp.asarray(0), False)
    return mean, logvar, log_px_at_mean, kl, loss, metrics['elbo']

  mean, logvar, log_px_at_mean, kl, loss, elbo = run(variables)
  chex.assert_trees_all_close(loss, -elbo)
  # Analytically: E_q log N(x; W z + b, s^2) = log N(x; W mu + b, s^2)
  #   - tr(W Sigma W^T) / (2 s^2).
  variances = np.exp(np.asarray(logvar, np.float64))
  trace = np.sum(np.sum(kernel**2, 0) * variances, -1)
  analytic_elbo = log_px_at_mean - trace / (2 * PPCA_NOISE_SCALE**2) - kl
  chex.assert_trees_all_close(analytic_elbo, log_px,
                              atol=2e-5 * np.abs(log_px).max())

  # The Monte-Carlo ELBO of make_elbo is within 5 standard errors of log p(x):
  # log p(x|z) = c - |a - B eps|^2 / (2 s^2) with a = x - W mu - b and
  # B = W diag(sigma), so Var = (2 tr((B B^T)^2) + 4 a^T B B^T a) / (4 s^4).
  residuals = (np.asarray(x, np.float64).reshape(PPCA_EXAMPLES, -1)
               - np.asarray(mean, np.float64) @ kernel.T
               - np.asarray(variables['params']['bias'], np.float64))
  standard_errors = []
  for a, v in zip(residuals[:num_examples], variances):
    bbt = kernel @ np.diag(v) @ kernel.T
    variance = (2 * np.trace(bbt @ bbt) + 4 * a @ bbt @ a) / (
        4 * PPCA_NOISE_SCALE**4)
    standard_errors.append(math.sqrt(variance / num_samples))
  errors = np.abs(np.asarray(elbo) - log_px[:num_examples])
  assert np.all(errors < 5 * np.array(standard_errors) + 1e-4), (
      errors, standard_errors)


def diagonal_gaussian_kl(mean_q, var_q, mean_p, var_p):
  return 0.5 * np.sum(var_q / var_p + (mean_q - mean_p)**2 / var_p - 1
                      + np.log(var_p / var_q), -1)


def test_ppca_iwae_gap_shrinks_with_k(ppca):
  variables, x, log_px, likelihood, _ = ppca
  exact = ppca_model()
  model = ppca_model(**WORSE_POSTERIOR)
  ks = (1, 10, 100, 1000)

  @jax.jit
  def run(variables):
    # One call draws the samples of all four bounds: independent columns.
    log_weights = vae_objectives.log_importance_weights(
        model, variables, likelihood, x, per_example_keys(0, PPCA_EXAMPLES),
        sum(ks))
    return (log_weights, model.apply(variables, x, method=model.encode),
            exact.apply(variables, x, method=exact.encode))

  log_weights, (mean_q, logvar_q), (mean_p, logvar_p) = run(variables)
  bounds = independent_iwae_bounds(log_weights, ks)
  gaps = {k: log_px - bounds[k] for k in ks}
  # E[log w] = log p(x) - KL(q || p(z|x)).
  kl = diagonal_gaussian_kl(*(np.asarray(a, np.float64) for a in (
      mean_q, np.exp(logvar_q), mean_p, np.exp(logvar_p))))
  difference, standard_error = mean_and_standard_error(gaps[1] - kl)
  assert abs(difference) < 4 * standard_error, (difference, standard_error)

  for smaller_k, larger_k in zip(ks, ks[1:]):
    shrinkage, standard_error = mean_and_standard_error(
        gaps[smaller_k] - gaps[larger_k])
    assert shrinkage > 4 * standard_error, (smaller_k, larger_k, shrinkage,
                                            standard_error)
  # L_1000 is close to log p(x), and not above it beyond noise.
  gap, standard_error = mean_and_standard_error(gaps[1000])
  assert -4 * standard_error < gap < 0.01 * gaps[1].mean(), (
      gap, standard_error, gaps[1].mean())


def test_chunked_iwae_log_likelihood_matches_one_shot(ppca):
  variables, x, _, likelihood, _ = ppca
  model = ppca_model(**WORSE_POSTERIOR)
  x = x[:16]
  keys = per_example_keys(0, 16)

  # Chunk c draws its samples with fold_in(key, c).
  chunk_keys = [jnp.stack([jax.random.fold_in(key, chunk) for key in keys])
                for chunk in range(4)]

  @jax.jit
  def run(variables, chunk_keys):
    chunked = vae_objectives.iwae_log_likelihood(
        model, variables, likelihood, x, keys, num_samples=400,
        chunk_size=100)
    log_weights = jnp.concatenate([
        vae_objectives.log_importance_weights(
            model, variables, likelihood, x, keys_c, 100)
        for keys_c in chunk_keys], axis=-1)
    return chunked, log_weights

  chunked, log_weights = run(variables, chunk_keys)
  chex.assert_trees_all_close(chunked, vae_objectives.iwae_bound(log_weights),
                              rtol=1e-6, atol=1e-5)
  expected = scipy.special.logsumexp(np.asarray(log_weights, np.float64),
                                     axis=-1) - math.log(400)
  chex.assert_trees_all_close(chunked, expected, rtol=1e-6, atol=1e-5)
  with pytest.raises(ValueError, match='multiple'):
    vae_objectives.iwae_log_likelihood(model, variables, likelihood, x, keys,
                                 num_samples=250, chunk_size=100)
