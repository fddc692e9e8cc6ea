"""The Gaussian-mixture linear classifier, fitted by EM.

Z ~ Cat(π), X | Z=k ~ N(μ_k, σ_k² I) and P(Y=1 | X, Z=k) = sigmoid(w_e,k +
w_x,k · X). The E-step includes the label likelihood; the M-step is closed
form for π, μ and σ² and takes gradient steps (optax Adam) for the label
weights, keeping only steps that raise Q. `fit_mixture_classifier` runs it in
one jitted loop; the train loop runs one iteration per step
(`vaejax.objectives.mixture`) from `classifier_e_step_per_example` and
`label_weights_m_step`.
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from vaejax.analysis import gmm
from vaejax.analysis import kmeans as kmeans_lib
from vaejax.analysis import inputs


class MixtureClassifier(NamedTuple):
  """Parameters of the Gaussian-mixture linear classifier (module docstring)."""
  log_weights: jax.Array  # [K], log π_k.
  means: jax.Array  # [K, D], μ_k.
  variances: jax.Array  # [K], σ_k² of the cluster covariance σ_k² I.
  label_biases: jax.Array  # [K], w_e,k.
  label_weights: jax.Array  # [K, D], w_x,k.



def _cluster_log_joint(params: MixtureClassifier, x) -> jax.Array:
  """[N, K] log π_k + log N(x_n; μ_k, σ_k² I): the X-part of the model."""
  inputs.check_features(x, params.means)
  variances = jnp.broadcast_to(params.variances[:, None], params.means.shape)
  return params.log_weights + gmm.log_gaussian_diag(x, params.means, variances)


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
  counts, log_weights, means = gmm.weighted_counts_and_means(x, responsibilities)
  variances = (
      jnp.sum(responsibilities * kmeans_lib.squared_distances(x, means), axis=0)
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
  clusters = kmeans_lib.run_kmeans(key, x, num_components, 100, 1e-4)
  cluster_one_hot = jax.nn.one_hot(
      clusters.assignments, num_components, dtype=x.dtype)
  return MixtureClassifier(
      *_closed_form_cluster_parameters(x, cluster_one_hot, reg_covar),
      label_biases=jnp.zeros((num_components,), x.dtype),
      label_weights=jnp.zeros((num_components, x.shape[1]), x.dtype))


def init_mixture_classifier(key: jax.Array, x, num_components: int,
                            reg_covar: float = 1e-6) -> MixtureClassifier:
  """Clusters from k-means (seeded with `key`), label weights zero."""
  x = inputs.as_float_array(x)
  inputs.check_data(x, num_components)
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
  (params, _, _), history = gmm.iterate_until_converged(
      em_iteration,
      (initial_params, initial_optimizer_state, initial_responsibilities),
      initial_log_likelihood, max_steps, tol)
  return params, history


def fit_mixture_classifier(
    key: jax.Array, x, y, num_components: int, max_steps: int = 100,
    tol: float = 1e-4, gradient_steps_per_m_step: int = 10,
    learning_rate: float = 0.05, reg_covar: float = 1e-6
) -> tuple[MixtureClassifier, gmm.FitHistory]:
  """Fits the Gaussian-mixture linear classifier by generalised EM.

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
    The fitted parameters and the `gmm.FitHistory` of the mean log p(x, y).
  """
  x = inputs.as_float_array(x)
  inputs.check_data(x, num_components)
  y = jnp.asarray(y)
  inputs.check_binary_labels(y, x.shape[0])
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

