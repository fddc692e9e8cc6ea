"""Expectation–maximisation for latent-variable baselines (SPEC §5).

Two models, each fitted by EM inside one jitted `jax.lax.while_loop`:

* `GaussianMixture`: π_k, μ_k and diagonal or full Σ_k, fitted by `fit_gmm`.
  Densities are computed in log space; full covariances go through their
  Cholesky factor, never an explicit inverse or determinant.
* `MixtureClassifier`: Z ~ Cat(π), X | Z=k ~ N(μ_k, σ_k² I) and
  P(Y=1 | X, Z=k) = sigmoid(w_e,k + w_x,k · X), fitted by
  `fit_mixture_classifier`.

Plus k-means (`kmeans_plusplus_init`, `kmeans`) for initialisation and
`cluster_accuracy` for scoring clusters of learned latents against labels.

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
import numpy as np
import optax
import scipy.optimize

COVARIANCE_TYPES = ('diag', 'full')


class GaussianMixture(NamedTuple):
  """Parameters of a Gaussian mixture with K components in D dimensions."""
  log_weights: jax.Array  # [K], log π_k.
  means: jax.Array  # [K, D]
  covariances: jax.Array  # [K, D] variances ('diag') or [K, D, D] ('full').

  @property
  def covariance_type(self) -> str:
    return 'diag' if self.covariances.ndim == 2 else 'full'


class MixtureClassifier(NamedTuple):
  """Parameters of the Gaussian-mixture linear classifier of SPEC §5."""
  log_weights: jax.Array  # [K], log π_k.
  means: jax.Array  # [K, D], μ_k.
  variances: jax.Array  # [K], σ_k² of the cluster covariance σ_k² I.
  label_biases: jax.Array  # [K], w_e,k.
  label_weights: jax.Array  # [K, D], w_x,k.


class KMeansResult(NamedTuple):
  centers: jax.Array  # [K, D]
  assignments: jax.Array  # [N], index of the nearest center.
  inertia: jax.Array  # [], sum of squared distances to assigned centers.


class FitHistory(NamedTuple):
  """Mean log-likelihood per EM iteration.

  `mean_log_likelihood[t]` is the mean log-likelihood of the parameters after
  t M-steps (entry 0: the initial parameters); entries after `num_steps` are
  NaN.
  """
  mean_log_likelihood: jax.Array  # [max_steps + 1]
  num_steps: jax.Array  # [], number of M-steps run.
  converged: jax.Array  # [], whether the relative change fell to `tol`.


# Input checks. The public fitting functions run them on concrete arrays before
# any work is traced.


def _as_float_array(x) -> jax.Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  return x


def _check_data(x: jax.Array, num_components: int) -> None:
  if x.ndim != 2:
    raise ValueError(
        f'x must be 2-D [num_examples, num_features], got shape {x.shape}; '
        'reshape it, e.g. x.reshape(len(x), -1).')
  if num_components < 1:
    raise ValueError(
        f'The number of components must be at least 1, got {num_components}.')
  if x.shape[0] < num_components:
    raise ValueError(
        f'x has {x.shape[0]} examples but {num_components} components were '
        'requested; use at most as many components as examples.')
  # Values are known only outside a trace; inside the train loop's jitted
  # step a NaN reaches the loss instead, and the loop stops on it.
  if (not isinstance(x, jax.core.Tracer)
      and not bool(jnp.all(jnp.isfinite(x)))):
    raise ValueError(
        'x contains NaN or inf; remove or impute those entries before '
        'fitting.')


def _check_covariance_type(covariance_type: str) -> None:
  if covariance_type not in COVARIANCE_TYPES:
    raise ValueError(
        f'Unknown covariance_type {covariance_type!r}; '
        f'known types: {", ".join(COVARIANCE_TYPES)}.')


def _check_binary_labels(y: jax.Array, num_examples: int) -> None:
  if y.shape != (num_examples,):
    raise ValueError(
        f'y must be 1-D with one label per example, shape ({num_examples},), '
        f'got shape {y.shape}.')
  if not bool(jnp.all((y == 0) | (y == 1))):
    raise ValueError('y must contain only the labels 0 and 1.')


def _check_features(x: jax.Array, means: jax.Array) -> None:
  if x.ndim != 2 or x.shape[1] != means.shape[1]:
    raise ValueError(
        f'x must have shape [num_examples, {means.shape[1]}] to match the '
        f'model, got {x.shape}.')


# k-means.


def _squared_distances(x: jax.Array, centers: jax.Array) -> jax.Array:
  """[N, K] squared Euclidean distances between examples and centers."""
  return jnp.sum((x[:, None, :] - centers[None, :, :])**2, axis=-1)


@functools.partial(jax.jit, static_argnames=('num_components',))
def _kmeans_plusplus_init(key, x, num_components):
  keys = jax.random.split(key, num_components)
  first_center = x[jax.random.randint(keys[0], (), 0, x.shape[0])]
  centers = jnp.broadcast_to(first_center, (num_components, x.shape[1]))
  nearest_squared_distance = jnp.sum((x - first_center)**2, axis=-1)

  def add_center(center_index, state):
    centers, nearest_squared_distance = state
    # The next center is drawn with probability proportional to D(x)^2.
    new_center = x[jax.random.categorical(
        keys[center_index], jnp.log(nearest_squared_distance))]
    nearest_squared_distance = jnp.minimum(
        nearest_squared_distance, jnp.sum((x - new_center)**2, axis=-1))
    return centers.at[center_index].set(new_center), nearest_squared_distance

  centers, _ = jax.lax.fori_loop(
      1, num_components, add_center, (centers, nearest_squared_distance))
  return centers


def kmeans_plusplus_init(key: jax.Array, x, num_components: int) -> jax.Array:
  """k-means++ seeding (Arthur & Vassilvitskii, 2007): [K, D] data points."""
  x = _as_float_array(x)
  _check_data(x, num_components)
  return _kmeans_plusplus_init(key, x, num_components)


def _assign_to_centers(x, centers):
  squared_distances = _squared_distances(x, centers)
  assignments = jnp.argmin(squared_distances, axis=1)
  inertia = jnp.sum(jnp.min(squared_distances, axis=1))
  return assignments, inertia


@functools.partial(jax.jit, static_argnames=('num_clusters', 'max_steps'))
def _kmeans(key, x, num_clusters, max_steps, tol):
  # As in scikit-learn, tol is relative to the mean per-feature variance of x.
  shift_tolerance = tol * jnp.mean(jnp.var(x, axis=0))

  def keep_going(state):
    _, step, squared_shift = state
    return (step < max_steps) & (squared_shift > shift_tolerance)

  def lloyd_step(state):
    centers, step, _ = state
    assignments, _ = _assign_to_centers(x, centers)
    one_hot = jax.nn.one_hot(assignments, num_clusters, dtype=x.dtype)
    counts = jnp.sum(one_hot, axis=0)[:, None]
    # An empty cluster keeps its previous center.
    new_centers = jnp.where(
        counts > 0, one_hot.T @ x / jnp.maximum(counts, 1), centers)
    return new_centers, step + 1, jnp.sum((new_centers - centers)**2)

  initial_centers = _kmeans_plusplus_init(key, x, num_clusters)
  centers, _, _ = jax.lax.while_loop(
      keep_going, lloyd_step,
      (initial_centers, 0, jnp.asarray(jnp.inf, x.dtype)))
  assignments, inertia = _assign_to_centers(x, centers)
  return KMeansResult(centers, assignments, inertia)


def kmeans(key: jax.Array, x, num_clusters: int, max_steps: int = 100,
           tol: float = 1e-4) -> KMeansResult:
  """Lloyd's algorithm from a k-means++ seeding drawn with `key`.

  Stops after `max_steps` or once the summed squared movement of the centers
  is at most `tol` times the mean per-feature variance of x (scikit-learn's
  rule).
  """
  x = _as_float_array(x)
  _check_data(x, num_clusters)
  return _kmeans(key, x, num_clusters, max_steps, tol)


# Gaussian mixture: densities, E-step and M-step.


def _log_gaussian_diag(x, means, variances):
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
  _check_features(x, params.means)
  if params.covariance_type == 'diag':
    log_densities = _log_gaussian_diag(x, params.means, params.covariances)
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


def _weighted_counts_and_means(x, responsibilities):
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
  _check_covariance_type(covariance_type)
  responsibilities = jnp.exp(log_resp)
  counts, log_weights, means = _weighted_counts_and_means(x, responsibilities)
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
  _check_covariance_type(covariance_type)
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
  means = _kmeans_plusplus_init(key, x, num_components)
  return GaussianMixture(log_weights, means, covariances)


def init_gmm(key: jax.Array, x, num_components: int,
             covariance_type: str = 'diag',
             reg_covar: float = 1e-6) -> GaussianMixture:
  """k-means++ means, the data covariance for each component, equal weights."""
  x = _as_float_array(x)
  _check_data(x, num_components)
  _check_covariance_type(covariance_type)
  return _init_gmm(key, x, num_components, covariance_type, reg_covar)


def init_gmm_from_responsibilities(
    x, responsibilities, covariance_type: str = 'diag',
    reg_covar: float = 1e-6) -> GaussianMixture:
  """The M-step for given [N, K] responsibilities (rows summing to one)."""
  x = _as_float_array(x)
  responsibilities = jnp.asarray(responsibilities, x.dtype)
  if responsibilities.ndim != 2:
    raise ValueError(
        'responsibilities must be 2-D [num_examples, num_components], got '
        f'shape {responsibilities.shape}.')
  _check_data(x, responsibilities.shape[1])
  if responsibilities.shape[0] != x.shape[0]:
    raise ValueError(
        f'responsibilities has {responsibilities.shape[0]} rows but x has '
        f'{x.shape[0]} examples; give one row per example.')
  _check_covariance_type(covariance_type)
  return m_step(x, jnp.log(responsibilities), covariance_type, reg_covar)


def init_gmm_from_means(x, means, covariance_type: str = 'diag',
                        reg_covar: float = 1e-6) -> GaussianMixture:
  """The M-step for hard assignments to the nearest of given [K, D] means.

  This is scikit-learn's initialisation from k-means labels: passing k-means
  centers reproduces `GaussianMixture(init_params='kmeans')`.
  """
  x = _as_float_array(x)
  means = jnp.asarray(means, x.dtype)
  if means.ndim != 2:
    raise ValueError(
        f'means must be 2-D [num_components, num_features], got shape '
        f'{means.shape}.')
  _check_data(x, means.shape[0])
  _check_features(x, means)
  assignments, _ = _assign_to_centers(x, means)
  one_hot = jax.nn.one_hot(assignments, means.shape[0], dtype=x.dtype)
  return init_gmm_from_responsibilities(x, one_hot, covariance_type, reg_covar)


# The EM loop shared by both models.


def _iterate_until_converged(em_iteration, carry, initial_log_likelihood,
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
  (params, _), history = _iterate_until_converged(
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
  x = _as_float_array(x)
  _check_data(x, num_components)
  _check_covariance_type(covariance_type)
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


# Gaussian-mixture linear classifier.


def _cluster_log_joint(params: MixtureClassifier, x) -> jax.Array:
  """[N, K] log π_k + log N(x_n; μ_k, σ_k² I): the X-part of the model."""
  _check_features(x, params.means)
  variances = jnp.broadcast_to(params.variances[:, None], params.means.shape)
  return params.log_weights + _log_gaussian_diag(x, params.means, variances)


def _label_logits(label_biases, label_weights, x) -> jax.Array:
  """[N, K] logits w_e,k + w_x,k · x_n of P(Y=1 | X, Z=k)."""
  return label_biases + x @ label_weights.T


def _log_bernoulli(y, logits):
  """[N, K] log Bernoulli(y_n; sigmoid(logits_nk)) for y in {0, 1}."""
  return jnp.where(y[:, None] == 1, jax.nn.log_sigmoid(logits),
                   jax.nn.log_sigmoid(-logits))


def classifier_e_step_per_example(params: MixtureClassifier, x, y):
  """Responsibilities [N, K] given (x, y), and per-example log p(x, y) [N]."""
  log_joint = _cluster_log_joint(params, x) + _log_bernoulli(
      y, _label_logits(params.label_biases, params.label_weights, x))
  log_likelihoods = jax.nn.logsumexp(log_joint, axis=1)
  return jnp.exp(log_joint - log_likelihoods[:, None]), log_likelihoods


def _classifier_e_step(params: MixtureClassifier, x, y):
  """Returns responsibilities [N, K] given (x, y) and the mean log p(x, y)."""
  responsibilities, log_likelihoods = classifier_e_step_per_example(
      params, x, y)
  return responsibilities, jnp.mean(log_likelihoods)


def _closed_form_cluster_parameters(x, responsibilities, reg_covar):
  """log π, μ and σ² maximising Q for the given responsibilities."""
  counts, log_weights, means = _weighted_counts_and_means(x, responsibilities)
  variances = (
      jnp.sum(responsibilities * _squared_distances(x, means), axis=0)
      / (counts * x.shape[1]) + reg_covar)
  return log_weights, means, variances


def label_negative_q(label_parameters, x, y, responsibilities) -> jax.Array:
  """Minus the part of Q that depends on the label weights, per example.

  label_parameters: (label_biases [K], label_weights [K, D]).
  """
  log_bernoulli = _log_bernoulli(y, _label_logits(*label_parameters, x))
  return -jnp.sum(responsibilities * log_bernoulli) / x.shape[0]


def _label_optimizer(learning_rate):
  return optax.adam(learning_rate)


def init_label_optimizer_state(label_parameters):
  """The state of the label weights' optimizer at the start of EM.

  Adam's state does not depend on the learning rate, so none is needed here.
  """
  return _label_optimizer(0.0).init(label_parameters)


def label_weights_m_step(negative_q, label_parameters, optimizer_state,
                         num_steps: int, learning_rate: float):
  """The M-step for the logistic weights: `num_steps` Adam steps on -Q.

  Generalised EM: log p(x, y) cannot fall while Q rises, so a step that does
  not lower `negative_q` (label_parameters -> scalar) is dropped, together
  with its update of the Adam moments. The Adam state is carried from one
  M-step to the next.

  Returns:
    The new label parameters and optimizer state.
  """
  optimizer = _label_optimizer(learning_rate)
  negative_q_and_gradient = jax.value_and_grad(negative_q)

  def gradient_step(_, state):
    parameters, optimizer_state = state
    current_loss, gradient = negative_q_and_gradient(parameters)
    updates, proposed_optimizer_state = optimizer.update(
        gradient, optimizer_state, parameters)
    proposed_parameters = optax.apply_updates(parameters, updates)
    accept = negative_q(proposed_parameters) < current_loss
    return jax.tree.map(
        lambda proposed, current: jnp.where(accept, proposed, current),
        (proposed_parameters, proposed_optimizer_state), state)

  return jax.lax.fori_loop(0, num_steps, gradient_step,
                           (label_parameters, optimizer_state))


@functools.partial(jax.jit, static_argnames=('num_components',))
def _init_mixture_classifier(key, x, num_components, reg_covar):
  # k-means clusters and a flat label model P(Y=1 | X, Z) = 1/2.
  clusters = _kmeans(key, x, num_components, 100, 1e-4)
  cluster_one_hot = jax.nn.one_hot(
      clusters.assignments, num_components, dtype=x.dtype)
  return MixtureClassifier(
      *_closed_form_cluster_parameters(x, cluster_one_hot, reg_covar),
      label_biases=jnp.zeros((num_components,), x.dtype),
      label_weights=jnp.zeros((num_components, x.shape[1]), x.dtype))


def init_mixture_classifier(key: jax.Array, x, num_components: int,
                            reg_covar: float = 1e-6) -> MixtureClassifier:
  """Clusters from k-means (seeded with `key`), label weights zero."""
  x = _as_float_array(x)
  _check_data(x, num_components)
  return _init_mixture_classifier(key, x, num_components, reg_covar)


@functools.partial(
    jax.jit, static_argnames=('num_components', 'max_steps',
                              'gradient_steps_per_m_step'))
def _fit_mixture_classifier(key, x, y, num_components, max_steps, tol,
                            gradient_steps_per_m_step, learning_rate,
                            reg_covar):

  def em_iteration(carry):
    params, optimizer_state, responsibilities = carry
    log_weights, means, variances = _closed_form_cluster_parameters(
        x, responsibilities, reg_covar)
    (label_biases, label_weights), optimizer_state = label_weights_m_step(
        lambda label_parameters: label_negative_q(
            label_parameters, x, y, responsibilities),
        (params.label_biases, params.label_weights), optimizer_state,
        gradient_steps_per_m_step, learning_rate)
    params = MixtureClassifier(
        log_weights, means, variances, label_biases, label_weights)
    responsibilities, mean_log_likelihood = _classifier_e_step(params, x, y)
    return ((params, optimizer_state, responsibilities),
            mean_log_likelihood)

  initial_params = _init_mixture_classifier(key, x, num_components, reg_covar)
  initial_responsibilities, initial_log_likelihood = _classifier_e_step(
      initial_params, x, y)
  initial_optimizer_state = init_label_optimizer_state(
      (initial_params.label_biases, initial_params.label_weights))
  (params, _, _), history = _iterate_until_converged(
      em_iteration,
      (initial_params, initial_optimizer_state, initial_responsibilities),
      initial_log_likelihood, max_steps, tol)
  return params, history


def fit_mixture_classifier(
    key: jax.Array, x, y, num_components: int, max_steps: int = 100,
    tol: float = 1e-4, gradient_steps_per_m_step: int = 10,
    learning_rate: float = 0.05, reg_covar: float = 1e-6
) -> tuple[MixtureClassifier, FitHistory]:
  """Fits the Gaussian-mixture linear classifier of SPEC §5 by generalised EM.

  The E-step responsibilities use both x and the label y. The M-step sets π,
  μ and σ² in closed form and takes `gradient_steps_per_m_step` Adam steps on
  the per-cluster logistic weights (`label_weights_m_step`), keeping a step
  only when it raises Q, so the observed-data log-likelihood log p(x, y)
  never decreases.

  Args:
    key: PRNG key for the k-means initialisation of the clusters.
    x: [N, D] features.
    y: [N] binary labels in {0, 1}.
    num_components: K, the number of clusters.
    max_steps: maximum number of EM iterations.
    tol: stop once the relative change of the mean log p(x, y) is at most tol.
    gradient_steps_per_m_step: Adam steps on the logistic weights per M-step.
    learning_rate: Adam learning rate.
    reg_covar: added to every σ_k² to keep it positive.

  Returns:
    The fitted parameters and the `FitHistory` of the mean log p(x, y).
  """
  x = _as_float_array(x)
  _check_data(x, num_components)
  y = jnp.asarray(y)
  _check_binary_labels(y, x.shape[0])
  return _fit_mixture_classifier(
      key, x, y.astype(x.dtype), num_components, max_steps, tol,
      gradient_steps_per_m_step, learning_rate, reg_covar)


@jax.jit
def predict_proba(params: MixtureClassifier, x) -> jax.Array:
  """[N] P(Y=1 | X) = Σ_k P(Z=k | X) sigmoid(w_e,k + w_x,k · X).

  P(Z=k | X) comes from the X-part of the model only, as y is unknown.
  """
  cluster_posterior = jax.nn.softmax(_cluster_log_joint(params, x), axis=1)
  label_probabilities = jax.nn.sigmoid(
      _label_logits(params.label_biases, params.label_weights, x))
  return jnp.sum(cluster_posterior * label_probabilities, axis=1)


# Scoring clusters against labels.


def cluster_accuracy(predicted, labels) -> float:
  """Accuracy under the best one-to-one matching of clusters to labels.

  The matching maximises the number of agreements (Hungarian algorithm); with
  more clusters than labels, examples in unmatched clusters count as errors.
  """
  predicted = np.asarray(predicted)
  labels = np.asarray(labels)
  if (predicted.ndim != 1 or predicted.shape != labels.shape
      or not predicted.size):
    raise ValueError(
        'predicted and labels must be non-empty 1-D arrays of the same '
        f'length, got shapes {predicted.shape} and {labels.shape}.')
  _, cluster_index = np.unique(predicted, return_inverse=True)
  _, label_index = np.unique(labels, return_inverse=True)
  agreements = np.zeros(
      (cluster_index.max() + 1, label_index.max() + 1), np.int64)
  np.add.at(agreements, (cluster_index, label_index), 1)
  rows, columns = scipy.optimize.linear_sum_assignment(
      agreements, maximize=True)
  return float(agreements[rows, columns].sum() / predicted.size)
