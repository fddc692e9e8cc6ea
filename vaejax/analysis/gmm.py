"""Expectation–maximisation for Gaussian mixtures (Dempster et al., 1977).

Two models, each fitted by EM inside one jitted `jax.lax.while_loop`:

* `GaussianMixture`: π_k, μ_k and diagonal or full Σ_k, fitted by `fit_gmm`.
  Densities are computed in log space; full covariances go through their
  Cholesky factor, never an explicit inverse or determinant.
* `MixtureClassifier`: Z ~ Cat(π), X | Z=k ~ N(μ_k, σ_k² I) and
  P(Y=1 | X, Z=k) = sigmoid(w_e,k + w_x,k · X), fitted by
  `fit_mixture_classifier`.

k-means++ seeding and `cluster_accuracy` live in `vaejax.analysis.kmeans`,
the classifier in `vaejax.analysis.mixture_classifier`.

The train loop runs the same EM one iteration per step
(`vaejax.objectives.mixture`) from the pieces here: `e_step_per_example`,
`sufficient_statistics` (means over examples, so shards pool by a mean over
devices), `m_step_from_statistics`, and for the classifier
`classifier_e_step_per_example` and `label_weights_m_step`.

Arrays keep the floating dtype of `x` (float32 by default, float64 under
`jax.enable_x64`). Both EM fits return a `FitHistory` of the mean
log-likelihood per iteration, so callers can check that EM never decreases it.
"""
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vaejax.analysis import inputs
from vaejax.analysis import kmeans as kmeans_lib

COVARIANCE_TYPES = inputs.COVARIANCE_TYPES


class GaussianMixture(NamedTuple):
  """Parameters of a Gaussian mixture with K components in D dimensions."""
  log_weights: jax.Array  # [K], log π_k.
  means: jax.Array  # [K, D]
  covariances: jax.Array  # [K, D] variances ('diag') or [K, D, D] ('full').

  @property
  def covariance_type(self) -> str:
    return 'diag' if self.covariances.ndim == 2 else 'full'



class FitHistory(NamedTuple):
  """Mean log-likelihood per EM iteration.

  `mean_log_likelihood[t]` is the mean log-likelihood of the parameters after
  t M-steps (entry 0: the initial parameters); entries after `num_steps` are
  NaN.
  """
  mean_log_likelihood: jax.Array  # [max_steps + 1]
  num_steps: jax.Array  # [], number of M-steps run.
  converged: jax.Array  # [], whether the relative change fell to `tol`.



# Gaussian mixture: densities, E-step and M-step.


def log_gaussian_diag(x, means, variances):
  """[N, K] log N(x_n; μ_k, diag(variances_k))."""
  squared_mahalanobis = jnp.sum(
      (x[:, None, :] - means[None])**2 / variances[None], axis=-1)
  log_determinant = jnp.sum(jnp.log(variances), axis=-1)
  return -0.5 * (x.shape[1] * math.log(2 * math.pi) + log_determinant
                 + squared_mahalanobis)


def _log_gaussian_full(x, means, covariances):
  """[N, K] log N(x_n; μ_k, Σ_k) through the Cholesky factor L_k of Σ_k."""
  cholesky_factors = jnp.linalg.cholesky(covariances)

  def log_density_one_component(mean, cholesky_factor):
    whitened = jax.scipy.linalg.solve_triangular(
        cholesky_factor, (x - mean).T, lower=True)
    half_log_determinant = jnp.sum(jnp.log(jnp.diagonal(cholesky_factor)))
    return -0.5 * jnp.sum(whitened**2, axis=0) - half_log_determinant

  log_densities = jax.vmap(log_density_one_component, out_axes=1)(
      means, cholesky_factors)
  return log_densities - 0.5 * x.shape[1] * math.log(2 * math.pi)


def _log_joint(params: GaussianMixture, x) -> jax.Array:
  """[N, K] log π_k + log N(x_n; μ_k, Σ_k)."""
  inputs.check_features(x, params.means)
  if params.covariance_type == 'diag':
    log_densities = log_gaussian_diag(x, params.means, params.covariances)
  else:
    log_densities = _log_gaussian_full(x, params.means, params.covariances)
  return params.log_weights + log_densities


@jax.jit
def log_likelihood(params: GaussianMixture, x) -> jax.Array:
  """[N] per-example log p(x_n) = log Σ_k π_k N(x_n; μ_k, Σ_k)."""
  return jax.nn.logsumexp(_log_joint(params, x), axis=1)


@jax.jit
def e_step_per_example(params: GaussianMixture,
                       x) -> tuple[jax.Array, jax.Array]:
  """Returns log responsibilities [N, K] and per-example log p(x_n) [N]."""
  log_joint = _log_joint(params, x)
  log_likelihoods = jax.nn.logsumexp(log_joint, axis=1)
  return log_joint - log_likelihoods[:, None], log_likelihoods


@jax.jit
def e_step(params: GaussianMixture, x) -> tuple[jax.Array, jax.Array]:
  """Returns log responsibilities [N, K] and the mean log-likelihood of x."""
  log_resp, log_likelihoods = e_step_per_example(params, x)
  return log_resp, jnp.mean(log_likelihoods)


@jax.jit
def predict(params: GaussianMixture, x) -> jax.Array:
  """[N] most responsible component of each example."""
  return jnp.argmax(_log_joint(params, x), axis=1)


def weighted_counts_and_means(x, responsibilities):
  """Returns Σ_n τ_nk, log π_k = log(Σ_n τ_nk / N) and the weighted means."""
  # The offset (as in scikit-learn) keeps an empty component finite.
  counts = (jnp.sum(responsibilities, axis=0)
            + 10 * jnp.finfo(responsibilities.dtype).eps)
  log_weights = jnp.log(counts) - jnp.log(x.shape[0])
  return counts, log_weights, responsibilities.T @ x / counts[:, None]


@functools.partial(jax.jit, static_argnames=('covariance_type',))
def m_step(x, log_resp, covariance_type: str = 'diag',
           reg_covar: float = 1e-6) -> GaussianMixture:
  """Responsibility-weighted moments; `reg_covar` is added to each variance."""
  inputs.check_covariance_type(covariance_type)
  responsibilities = jnp.exp(log_resp)
  counts, log_weights, means = weighted_counts_and_means(x, responsibilities)
  centered = x[None, :, :] - means[:, None, :]  # [K, N, D]
  if covariance_type == 'diag':
    covariances = (
        jnp.einsum('nk,knd->kd', responsibilities, centered**2)
        / counts[:, None] + reg_covar)
  else:
    covariances = (
        jnp.einsum('nk,knd,kne->kde', responsibilities, centered, centered)
        / counts[:, None, None]
        + reg_covar * jnp.eye(x.shape[1], dtype=x.dtype))
  return GaussianMixture(log_weights, means, covariances)


# Gaussian mixture: the M-step from sufficient statistics.


class SufficientStatistics(NamedTuple):
  """Means over examples of τ_nk, τ_nk x_n and τ_nk x_n x_nᵀ.

  Means rather than sums, so the statistics of equal-sized shards of a data
  set average to those of the whole: data-parallel EM needs only a mean over
  devices. The second moments are [K, D] (τ_nk x_n², for 'diag') or
  [K, D, D] (for 'full').
  """
  weights: jax.Array  # [K]
  weighted_sums: jax.Array  # [K, D]
  weighted_second_moments: jax.Array  # [K, D] or [K, D, D]


def sufficient_statistics(
    x, responsibilities, covariance_type: str = 'diag'
) -> SufficientStatistics:
  """The statistics of x [N, D] under responsibilities [N, K]."""
  inputs.check_covariance_type(covariance_type)
  num_examples = x.shape[0]
  if covariance_type == 'diag':
    second_moments = responsibilities.T @ x**2
  else:
    # Contracting over examples one component at a time keeps the
    # intermediate at [N, K, D] rather than [N, K, D, D].
    second_moments = jnp.einsum(
        'nkd,ne->kde', responsibilities[:, :, None] * x[:, None, :], x)
  return SufficientStatistics(
      jnp.mean(responsibilities, axis=0),
      responsibilities.T @ x / num_examples,
      second_moments / num_examples)


def m_step_from_statistics(statistics: SufficientStatistics,
                           reg_covar: float = 1e-6) -> GaussianMixture:
  """The M-step of `m_step`, from the statistics of the E-step.

  The covariance is E_τ[x xᵀ] - μ μᵀ (one pass over the data, so it can
  be pooled across devices), which loses precision when |μ|² dwarfs the
  variances; `m_step` takes the centered second pass for single-host use.
  """
  weights, weighted_sums, second_moments = statistics
  # The offset (as in `m_step`) keeps an empty component finite.
  weights = weights + 10 * jnp.finfo(weights.dtype).eps
  means = weighted_sums / weights[:, None]
  if second_moments.ndim == 2:
    covariances = second_moments / weights[:, None] - means**2 + reg_covar
  else:
    covariances = (
        second_moments / weights[:, None, None]
        - means[:, :, None] * means[:, None, :]
        + reg_covar * jnp.eye(means.shape[1], dtype=means.dtype))
  return GaussianMixture(jnp.log(weights), means, covariances)


# Gaussian mixture: initialisation.


@functools.partial(
    jax.jit, static_argnames=('num_components', 'covariance_type'))
def _init_gmm(key, x, num_components, covariance_type, reg_covar):
  # The whole data set as a single component gives the data covariance.
  data_moments = m_step(
      x, jnp.zeros((x.shape[0], 1), x.dtype), covariance_type, reg_covar)
  covariances = jnp.broadcast_to(
      data_moments.covariances,
      (num_components,) + data_moments.covariances.shape[1:])
  log_weights = jnp.full((num_components,), -math.log(num_components), x.dtype)
  means = kmeans_lib.seed_kmeans_plusplus(key, x, num_components)
  return GaussianMixture(log_weights, means, covariances)


def init_gmm(key: jax.Array, x, num_components: int,
             covariance_type: str = 'diag',
             reg_covar: float = 1e-6) -> GaussianMixture:
  """k-means++ means, the data covariance for each component, equal weights."""
  x = inputs.as_float_array(x)
  inputs.check_data(x, num_components)
  inputs.check_covariance_type(covariance_type)
  return _init_gmm(key, x, num_components, covariance_type, reg_covar)


def init_gmm_from_responsibilities(
    x, responsibilities, covariance_type: str = 'diag',
    reg_covar: float = 1e-6) -> GaussianMixture:
  """The M-step for given [N, K] responsibilities (rows summing to one)."""
  x = inputs.as_float_array(x)
  responsibilities = jnp.asarray(responsibilities, x.dtype)
  if responsibilities.ndim != 2:
    raise ValueError(
        'responsibilities must be 2-D [num_examples, num_components], got '
        f'shape {responsibilities.shape}.')
  inputs.check_data(x, responsibilities.shape[1])
  if responsibilities.shape[0] != x.shape[0]:
    raise ValueError(
        f'responsibilities has {responsibilities.shape[0]} rows but x has '
        f'{x.shape[0]} examples; give one row per example.')
  inputs.check_covariance_type(covariance_type)
  return m_step(x, jnp.log(responsibilities), covariance_type, reg_covar)


def init_gmm_from_means(x, means, covariance_type: str = 'diag',
                        reg_covar: float = 1e-6) -> GaussianMixture:
  """The M-step for hard assignments to the nearest of given [K, D] means.

  This is scikit-learn's initialisation from k-means labels: passing k-means
  centers reproduces `GaussianMixture(init_params='kmeans')`.
  """
  x = inputs.as_float_array(x)
  means = jnp.asarray(means, x.dtype)
  if means.ndim != 2:
    raise ValueError(
        f'means must be 2-D [num_components, num_features], got shape '
        f'{means.shape}.')
  inputs.check_data(x, means.shape[0])
  inputs.check_features(x, means)
  assignments, _ = kmeans_lib.assign_to_centers(x, means)
  one_hot = jax.nn.one_hot(assignments, means.shape[0], dtype=x.dtype)
  return init_gmm_from_responsibilities(x, one_hot, covariance_type, reg_covar)


# The EM loop shared by both models.


def iterate_until_converged(em_iteration, carry, initial_log_likelihood,
                             max_steps, tol):
  """Runs `em_iteration: carry -> (carry, mean log-likelihood)` in a loop.

  Stops after `max_steps` iterations or when the relative change of the mean
  log-likelihood is at most `tol`.
  """
  history = jnp.full((max_steps + 1,), jnp.nan, initial_log_likelihood.dtype)
  history = history.at[0].set(initial_log_likelihood)

  def keep_going(state):
    _, step, converged, _ = state
    return (step < max_steps) & ~converged

  def iteration(state):
    carry, step, _, history = state
    carry, mean_log_likelihood = em_iteration(carry)
    previous = history[step]
    converged = (jnp.abs(mean_log_likelihood - previous)
                 <= tol * jnp.abs(previous))
    history = history.at[step + 1].set(mean_log_likelihood)
    return carry, step + 1, converged, history

  carry, num_steps, converged, history = jax.lax.while_loop(
      keep_going, iteration, (carry, 0, jnp.asarray(False), history))
  return carry, FitHistory(history, num_steps, converged)


@functools.partial(jax.jit, static_argnames=('max_steps',))
def _run_gmm_em(initial_params, x, max_steps, tol, reg_covar):
  covariance_type = initial_params.covariance_type

  def em_iteration(carry):
    _, log_resp = carry
    params = m_step(x, log_resp, covariance_type, reg_covar)
    log_resp, mean_log_likelihood = e_step(params, x)
    return (params, log_resp), mean_log_likelihood

  initial_log_resp, initial_log_likelihood = e_step(initial_params, x)
  (params, _), history = iterate_until_converged(
      em_iteration, (initial_params, initial_log_resp), initial_log_likelihood,
      max_steps, tol)
  return params, history


def fit_gmm(key: jax.Array, x, num_components: int,
            covariance_type: str = 'diag', max_steps: int = 100,
            tol: float = 1e-3, reg_covar: float = 1e-6,
            init: GaussianMixture | None = None
            ) -> tuple[GaussianMixture, FitHistory]:
  """Fits a Gaussian mixture by EM.

  Args:
    key: PRNG key for the k-means++ initialisation (unused if `init` is given).
    x: [N, D] data.
    num_components: K.
    covariance_type: one of COVARIANCE_TYPES.
    max_steps: maximum number of EM iterations (an M-step, then an E-step).
    tol: stop once |ΔL| <= tol |L| for the mean log-likelihood L.
    reg_covar: added to the diagonal of every covariance to keep it positive.
    init: starting parameters; `init_gmm(key, x, ...)` when None.

  Returns:
    The fitted parameters and the `FitHistory` of the mean log-likelihood.
  """
  x = inputs.as_float_array(x)
  inputs.check_data(x, num_components)
  inputs.check_covariance_type(covariance_type)
  if init is None:
    return _run_gmm_em(
        _init_gmm(key, x, num_components, covariance_type, reg_covar), x,
        max_steps, tol, reg_covar)
  num_features = x.shape[1]
  expected_covariance_shape = (
      (num_components, num_features) if covariance_type == 'diag'
      else (num_components, num_features, num_features))
  if (init.means.shape != (num_components, num_features)
      or init.covariances.shape != expected_covariance_shape):
    raise ValueError(
        f'init must be a {covariance_type!r} mixture with {num_components} '
        f'components in {num_features} dimensions: got means of shape '
        f'{init.means.shape} and covariances of shape '
        f'{init.covariances.shape}, expected covariances of shape '
        f'{expected_covariance_shape}.')
  init = jax.tree.map(lambda leaf: jnp.asarray(leaf, x.dtype), init)
  return _run_gmm_em(init, x, max_steps, tol, reg_covar)

