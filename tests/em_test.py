"""Tests for vaejax.em: Gaussian mixtures, k-means, the mixture classifier."""

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.special
import scipy.stats

from vaejax.analysis import gmm
from vaejax.analysis import kmeans as kmeans_lib
from vaejax.analysis import mixture_classifier

COVARIANCE_TYPES = ('diag', 'full')

TRUE_WEIGHTS = np.array([0.5, 0.3, 0.2])
TRUE_MEANS = np.array([[0.0, 0.0], [6.0, 1.0], [-1.0, 7.0]])
TRUE_COVARIANCES = {
    'diag': np.array([[1.0, 0.5], [0.4, 1.5], [2.0, 0.8]]),
    'full': np.array([[[1.0, 0.6], [0.6, 1.0]],
                      [[0.5, -0.3], [-0.3, 1.5]],
                      [[2.0, 0.0], [0.0, 0.8]]]),
}


def full_covariances(covariances):
  """[K, D, D] covariances from [K, D] variances or [K, D, D] covariances."""
  covariances = np.asarray(covariances)
  return (np.stack([np.diag(variances) for variances in covariances])
          if covariances.ndim == 2 else covariances)


def sample_mixture(rng, num_examples, weights, means, covariances):
  components = rng.choice(len(weights), size=num_examples, p=weights)
  cholesky_factors = np.linalg.cholesky(full_covariances(covariances))
  noise = rng.normal(size=(num_examples, means.shape[1]))
  return means[components] + np.einsum(
      'nde,ne->nd', cholesky_factors[components], noise)


def overlapping_data(seed=0, num_examples=600):
  """Three overlapping components in 3-D, so EM needs many iterations."""
  rng = np.random.default_rng(seed)
  means = np.array([[0.0, 0.0, 0.0], [1.5, 0.5, 0.0], [0.0, 1.5, 1.0]])
  covariances = np.array([np.eye(3), np.diag([0.5, 1.5, 1.0]),
                          [[1.0, 0.5, 0.2], [0.5, 1.0, 0.0], [0.2, 0.0, 1.0]]])
  return sample_mixture(rng, num_examples, np.array([0.4, 0.35, 0.25]), means,
                        covariances)


def matching_permutation(estimated_means, true_means):
  """Index into the estimate for each true component (closest means)."""
  squared_distances = np.sum(
      (np.asarray(estimated_means)[None] - true_means[:, None])**2, axis=-1)
  _, estimated_index = scipy.optimize.linear_sum_assignment(squared_distances)
  return estimated_index


def non_decreasing_up_to(history, relative_tolerance):
  steps_run = int(history.num_steps)
  values = np.asarray(history.mean_log_likelihood)[:steps_run + 1]
  return np.all(np.diff(values) >= -relative_tolerance * np.abs(values[:-1]))


@pytest.mark.parametrize('covariance_type', COVARIANCE_TYPES)
def test_log_likelihood_never_decreases(covariance_type):
  x = overlapping_data()  # float64 data is fitted in float32 unless x64 is on.
  params, history = gmm.fit_gmm(jax.random.key(0), x, 3, covariance_type,
                               max_steps=60, tol=0.0)
  chex.assert_type([*params, history.mean_log_likelihood], jnp.float32)
  assert int(history.num_steps) == 60
  chex.assert_tree_all_finite(history.mean_log_likelihood)
  assert non_decreasing_up_to(history, 1e-5)
  # EM must have done real work from the broad initial covariances.
  log_likelihood_gain = (history.mean_log_likelihood[-1]
                         - history.mean_log_likelihood[0])
  assert log_likelihood_gain > 0.05


@pytest.mark.parametrize('covariance_type', COVARIANCE_TYPES)
def test_recovers_known_mixture(covariance_type):
  rng = np.random.default_rng(1)
  true_covariances = TRUE_COVARIANCES[covariance_type]
  x = sample_mixture(rng, 3000, TRUE_WEIGHTS, TRUE_MEANS, true_covariances)
  params, history = gmm.fit_gmm(jax.random.key(2), x.astype(np.float32), 3,
                               covariance_type, max_steps=200, tol=1e-6)

  assert bool(history.converged)
  steps_run = int(history.num_steps)
  assert np.all(np.isnan(history.mean_log_likelihood[steps_run + 1:]))
  chex.assert_shape(params.covariances, true_covariances.shape)
  order = matching_permutation(params.means, TRUE_MEANS)
  # Tolerances are ~3 standard errors for the smallest (600-example)
  # component.
  np.testing.assert_allclose(np.exp(params.log_weights)[order], TRUE_WEIGHTS,
                             atol=0.03)
  np.testing.assert_allclose(params.means[order], TRUE_MEANS, atol=0.15)
  np.testing.assert_allclose(params.covariances[order], true_covariances,
                             atol=0.25)


@pytest.mark.parametrize('covariance_type', COVARIANCE_TYPES)
def test_matches_sklearn_from_same_initialisation(covariance_type):
  sklearn_mixture = pytest.importorskip('sklearn.mixture')
  x = overlapping_data(seed=3)
  num_steps = 30
  with jax.enable_x64(True):
    init = gmm.init_gmm(jax.random.key(4), x, 3, covariance_type)
    params, history = gmm.fit_gmm(None, x, 3, covariance_type,
                                 max_steps=num_steps, tol=0.0, init=init)
    own_mean_log_likelihood = float(jnp.mean(gmm.log_likelihood(params, x)))
    assert params.means.dtype == jnp.float64
    assert history.mean_log_likelihood.dtype == jnp.float64

  initial_covariances = np.asarray(init.covariances)
  reference = sklearn_mixture.GaussianMixture(
      n_components=3, covariance_type=covariance_type, tol=0.0,
      max_iter=num_steps, reg_covar=1e-6,
      weights_init=np.exp(np.asarray(init.log_weights)),
      means_init=np.asarray(init.means),
      precisions_init=(1 / initial_covariances if covariance_type == 'diag'
                       else np.linalg.inv(initial_covariances)))
  with warnings.catch_warnings():
    # tol=0 runs every iteration, which sklearn reports as "did not converge".
    warnings.simplefilter('ignore')
    reference.fit(x)

  # Same initialisation, same updates: identical trajectories, no permutation.
  np.testing.assert_allclose(own_mean_log_likelihood, reference.score(x),
                             rtol=1e-10)
  np.testing.assert_allclose(history.mean_log_likelihood[-1],
                             reference.score(x), rtol=1e-10)
  np.testing.assert_allclose(np.exp(params.log_weights), reference.weights_,
                             atol=1e-8)
  np.testing.assert_allclose(params.means, reference.means_, atol=1e-8)
  np.testing.assert_allclose(params.covariances, reference.covariances_,
                             atol=1e-8)


@pytest.mark.parametrize('covariance_type', COVARIANCE_TYPES)
def test_log_likelihood_matches_scipy(covariance_type):
  rng = np.random.default_rng(5)
  x = rng.normal(size=(50, 2)) * 3
  covariances = TRUE_COVARIANCES[covariance_type]
  with jax.enable_x64(True):
    params = gmm.GaussianMixture(jnp.log(TRUE_WEIGHTS),
                                jnp.asarray(TRUE_MEANS),
                                jnp.asarray(covariances))
    log_resp, mean_log_likelihood = gmm.e_step(params, x)
    per_example = gmm.log_likelihood(params, x)
    predicted = gmm.predict(params, x)

  log_joint = np.stack([
      np.log(weight)
      + scipy.stats.multivariate_normal(mean, covariance).logpdf(x)
      for weight, mean, covariance in zip(
          TRUE_WEIGHTS, TRUE_MEANS, full_covariances(covariances))], axis=1)
  expected = scipy.special.logsumexp(log_joint, axis=1)
  chex.assert_shape(per_example, (50,))
  np.testing.assert_allclose(per_example, expected, rtol=1e-12)
  np.testing.assert_allclose(mean_log_likelihood, expected.mean(), rtol=1e-12)
  np.testing.assert_allclose(log_resp, log_joint - expected[:, None],
                             atol=1e-10)
  np.testing.assert_array_equal(predicted, np.argmax(log_joint, axis=1))


def test_init_gmm_from_responsibilities_and_means():
  rng = np.random.default_rng(6)
  x = rng.normal(size=(40, 2)).astype(np.float32)
  hard_assignments = (x[:, 0] > 0).astype(int)
  from_responsibilities = gmm.init_gmm_from_responsibilities(
      x, np.eye(2)[hard_assignments], 'full')
  from_means = gmm.init_gmm_from_means(
      x, np.array([[-1.0, 0.0], [1.0, 0.0]]), 'full')
  chex.assert_trees_all_close(from_responsibilities, from_means, atol=1e-6)
  positive = x[hard_assignments == 1]
  np.testing.assert_allclose(from_means.means[1], positive.mean(0), rtol=1e-5)
  np.testing.assert_allclose(
      from_means.covariances[1],
      np.cov(positive.T, bias=True) + 1e-6 * np.eye(2), rtol=1e-4)
  np.testing.assert_allclose(np.exp(from_means.log_weights[1]),
                             len(positive) / len(x), rtol=1e-5)


def three_blobs(seed=7, num_examples=900):
  rng = np.random.default_rng(seed)
  centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
  blob = rng.integers(0, 3, num_examples)
  x = centers[blob] + rng.normal(size=(num_examples, 2))
  return x.astype(np.float32), blob


def test_kmeans_plusplus_is_reproducible_and_spreads_seeds():
  x, blob = three_blobs()
  first = kmeans_lib.kmeans_plusplus_init(jax.random.key(0), x, 3)
  again = kmeans_lib.kmeans_plusplus_init(jax.random.key(0), x, 3)
  other_key = kmeans_lib.kmeans_plusplus_init(jax.random.key(1), x, 3)
  chex.assert_trees_all_equal(first, again)
  assert not np.array_equal(first, other_key)
  for seed in range(5):
    centers = np.asarray(kmeans_lib.kmeans_plusplus_init(jax.random.key(seed), x, 3))
    seed_rows = [int(np.flatnonzero(np.all(x == center, axis=1))[0])
                 for center in centers]
    # Seeds are data points, and D^2 sampling puts one in each far-apart blob.
    assert sorted(blob[seed_rows]) == [0, 1, 2]


def test_kmeans_beats_random_assignment_and_is_consistent():
  x, _ = three_blobs()
  result = kmeans_lib.kmeans(jax.random.key(0), x, 3)
  squared_distances = np.sum(
      (x[:, None] - np.asarray(result.centers)[None])**2, axis=-1)
  np.testing.assert_array_equal(result.assignments, squared_distances.argmin(1))
  np.testing.assert_allclose(result.inertia, squared_distances.min(1).sum(),
                             rtol=1e-5)

  random_assignments = np.random.default_rng(8).integers(0, 3, len(x))
  random_inertia = sum(
      np.sum((x[random_assignments == k]
              - x[random_assignments == k].mean(axis=0))**2)
      for k in range(3))
  assert result.inertia <= random_inertia
  assert result.inertia < 0.1 * random_inertia


def test_kmeans_matches_sklearn():
  sklearn_cluster = pytest.importorskip('sklearn.cluster')
  x, blob = three_blobs()
  result = kmeans_lib.kmeans(jax.random.key(0), x, 3)
  reference = sklearn_cluster.KMeans(
      n_clusters=3, n_init=10, random_state=0).fit(x.astype(np.float64))
  np.testing.assert_allclose(result.inertia, reference.inertia_, rtol=1e-5)
  order = matching_permutation(result.centers, reference.cluster_centers_)
  np.testing.assert_allclose(result.centers[order], reference.cluster_centers_,
                             atol=1e-4)
  assert kmeans_lib.cluster_accuracy(result.assignments, reference.labels_) == 1.0
  assert kmeans_lib.cluster_accuracy(result.assignments, blob) > 0.99


def clusters_with_own_boundaries(rng, num_examples):
  """Three clusters, each with its own linear boundary through its center.

  The boundaries have slopes -1, +1 and infinity, so no single line separates
  the labels; 5% of the labels are flipped, which caps any classifier near
  0.95.
  """
  centers = np.array([[-5.0, 0.0], [5.0, 0.0], [0.0, 7.0]])
  boundary_normals = np.array([[1.0, 1.0], [1.0, -1.0], [1.0, 0.0]])
  cluster = rng.integers(0, 3, num_examples)
  x = centers[cluster] + rng.normal(size=(num_examples, 2))
  y = np.sum((x - centers[cluster]) * boundary_normals[cluster], axis=1) > 0
  y ^= rng.random(num_examples) < 0.05
  return x.astype(np.float32), y.astype(np.int32)


def test_mixture_classifier_beats_logistic_regression():
  linear_model = pytest.importorskip('sklearn.linear_model')
  rng = np.random.default_rng(9)
  x_train, y_train = clusters_with_own_boundaries(rng, 1500)
  x_test, y_test = clusters_with_own_boundaries(rng, 1500)

  params, history = mixture_classifier.fit_mixture_classifier(
      jax.random.key(0), x_train, y_train, 3, max_steps=200, tol=1e-6,
      gradient_steps_per_m_step=10, learning_rate=0.05)
  probabilities = mixture_classifier.predict_proba(params, x_test)
  chex.assert_shape(probabilities, (1500,))
  mixture_accuracy = np.mean((np.asarray(probabilities) > 0.5) == y_test)
  logistic_accuracy = linear_model.LogisticRegression().fit(
      x_train, y_train).score(x_test, y_test)

  assert mixture_accuracy >= 0.88
  assert mixture_accuracy >= logistic_accuracy + 0.15
  assert non_decreasing_up_to(history, 1e-6)
  assert history.mean_log_likelihood[int(history.num_steps)] > (
      history.mean_log_likelihood[0] + 0.1)


def test_predict_proba_matches_hand_computation():
  rng = np.random.default_rng(10)
  x = rng.normal(size=(20, 2))
  weights = np.array([0.7, 0.3])
  means = np.array([[-1.0, 0.0], [1.0, 0.5]])
  variances = np.array([0.5, 2.0])
  label_biases = np.array([0.3, -1.0])
  label_weights = np.array([[1.0, -2.0], [0.5, 0.5]])
  params = mixture_classifier.MixtureClassifier(
      *(jnp.asarray(a, jnp.float32) for a in (
          np.log(weights), means, variances, label_biases, label_weights)))

  cluster_joint = np.stack([
      weights[k] * scipy.stats.multivariate_normal(
          means[k], variances[k] * np.eye(2)).pdf(x)
      for k in range(2)], axis=1)
  cluster_posterior = cluster_joint / cluster_joint.sum(1, keepdims=True)
  label_probabilities = scipy.special.expit(label_biases + x @ label_weights.T)
  expected = np.sum(cluster_posterior * label_probabilities, axis=1)
  np.testing.assert_allclose(mixture_classifier.predict_proba(params, x.astype(np.float32)),
                             expected, rtol=1e-5)


def test_cluster_accuracy():
  labels = np.array([0, 0, 1, 1, 2, 2])
  relabelled = np.array([2, 0, 1])[labels] + 10
  assert kmeans_lib.cluster_accuracy(relabelled, labels) == 1.0
  # Matching a to 0 and b to 1 gives 2 + 2 agreements; cluster c is left over
  # because there are more clusters than labels.
  assert kmeans_lib.cluster_accuracy(
      list('aabbbc'), [0, 0, 0, 1, 1, 1]) == pytest.approx(4 / 6)
  # Two clusters for three labels: the best matching covers 2 + 2 examples.
  assert kmeans_lib.cluster_accuracy(
      [0, 0, 1, 1, 1, 1], [5, 5, 6, 6, 7, 7]) == pytest.approx(4 / 6)


@pytest.mark.parametrize('x, num_components, covariance_type, message', [
    (np.zeros(10), 2, 'diag', 'must be 2-D'),
    (np.zeros((2, 3, 1)), 2, 'diag', 'must be 2-D'),
    (np.zeros((2, 3)), 3, 'diag', 'at most as many components as examples'),
    (np.ones((10, 2)), 2, 'spherical', 'known types: diag, full'),
    (np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]), 2, 'diag', 'NaN'),
    (np.array([[0.0, np.inf], [1.0, 2.0], [1.0, 1.0]]), 2, 'full', 'inf'),
], ids=['1-d', '3-d', 'more-components-than-examples',
        'unknown-covariance-type', 'nan', 'inf'])
def test_fit_gmm_rejects_bad_input(x, num_components, covariance_type,
                                   message):
  with pytest.raises(ValueError, match=message):
    gmm.fit_gmm(jax.random.key(0), x, num_components, covariance_type)


def test_other_entry_points_reject_bad_input():
  x = np.ones((10, 2), np.float32)
  with pytest.raises(ValueError, match='must be 2-D'):
    kmeans_lib.kmeans(jax.random.key(0), x[:, 0], 2)
  with pytest.raises(ValueError, match='at most as many components'):
    kmeans_lib.kmeans_plusplus_init(jax.random.key(0), x, 11)
  with pytest.raises(ValueError, match="init must be a 'full' mixture"):
    gmm.fit_gmm(jax.random.key(0), x, 2, 'full',
               init=gmm.init_gmm(jax.random.key(0), x, 2, 'diag'))
  with pytest.raises(ValueError, match='only the labels 0 and 1'):
    mixture_classifier.fit_mixture_classifier(jax.random.key(0), x, np.full(10, 2), 2)
  with pytest.raises(ValueError, match='one label per example'):
    mixture_classifier.fit_mixture_classifier(jax.random.key(0), x, np.zeros(9), 2)
  params = gmm.init_gmm(jax.random.key(0), x, 2, 'full')
  with pytest.raises(ValueError, match=r'shape \[num_examples, 2\]'):
    gmm.log_likelihood(params, np.ones((10, 3), np.float32))
  with pytest.raises(ValueError, match='same length'):
    kmeans_lib.cluster_accuracy([0, 1], [0, 1, 1])
