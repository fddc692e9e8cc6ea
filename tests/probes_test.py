"""Linear probe, PCA and clustering accuracy on synthetic features with known
answers."""
import jax
import numpy as np
import pytest

from vaejax.analysis import clustering
from vaejax.analysis import pca
from vaejax.analysis import probes

NUM_CLASSES = 10


def clustered_features(seed, num_examples=1000, dims=8, separation=20.0):
  """Features around one centre per class (far apart) and their labels."""
  rng = np.random.default_rng(seed)
  centres = np.random.default_rng(0).normal(0.0, separation,
                                            (NUM_CLASSES, dims))
  labels = rng.integers(0, NUM_CLASSES, num_examples)
  return centres[labels] + rng.normal(0.0, 1.0, (num_examples, dims)), labels


def test_probe_separates_linearly_separable_classes():
  train_x, train_y = clustered_features(1)
  test_x, test_y = clustered_features(2)
  accuracy = probes.linear_probe_accuracy(train_x, train_y, test_x, test_y,
                                          NUM_CLASSES)
  assert accuracy > 0.99


def test_probe_is_at_chance_on_random_labels():
  train_x, _ = clustered_features(1)
  test_x, _ = clustered_features(2)
  rng = np.random.default_rng(3)
  accuracy = probes.linear_probe_accuracy(
      train_x, rng.integers(0, NUM_CLASSES, len(train_x)), test_x,
      rng.integers(0, NUM_CLASSES, len(test_x)), NUM_CLASSES)
  # Chance is 0.1; the standard error over 1000 test examples is 0.0095.
  assert abs(accuracy - 1.0 / NUM_CLASSES) < 0.04


def test_probe_is_deterministic_and_scale_invariant():
  x, y = clustered_features(1)
  first = probes.fit_linear_probe(x, y, NUM_CLASSES)
  second = probes.fit_linear_probe(x, y, NUM_CLASSES)
  np.testing.assert_array_equal(first.weights, second.weights)
  # Standardisation: rescaled and shifted features give the same predictions.
  rescaled = probes.fit_linear_probe(1000.0 * x + 5.0, y, NUM_CLASSES)
  test_x, _ = clustered_features(2)
  np.testing.assert_array_equal(rescaled.predict(1000.0 * test_x + 5.0),
                                first.predict(test_x))


def test_probe_rejects_mismatched_labels():
  x, y = clustered_features(1)
  with pytest.raises(ValueError, match='one label per example'):
    probes.fit_linear_probe(x, y[:-1], NUM_CLASSES)


def test_pca_finds_the_axes_of_largest_variance():
  rng = np.random.default_rng(0)
  rotation, _ = np.linalg.qr(rng.normal(size=(5, 5)))
  stddevs = np.array([5.0, 2.0, 1.0, 0.5, 0.1])
  x = (rng.normal(size=(4000, 5)) * stddevs) @ rotation.T + 3.0
  projected = pca.pca_project(x, 2)
  assert projected.shape == (4000, 2)
  np.testing.assert_allclose(projected.std(axis=0), stddevs[:2], rtol=0.05)
  np.testing.assert_allclose(projected.mean(axis=0), 0.0, atol=1e-4)
  # The projection onto the first principal axis, up to the sign convention.
  expected = (x - x.mean(axis=0)) @ rotation[:, 0]
  assert abs(np.corrcoef(projected[:, 0], expected)[0, 1]) > 0.999


def test_clustering_finds_well_separated_clusters():
  x, labels = clustered_features(4)
  # Cluster ids are arbitrary: the score matches them to labels one-to-one.
  accuracies = clustering.clustering_accuracies(
      jax.random.key(0), x, (labels + 3) % NUM_CLASSES, NUM_CLASSES)
  assert accuracies['kmeans'] > 0.99
  assert accuracies['gmm'] > 0.99


def test_clustering_of_uninformative_features_is_near_chance():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(1000, 8))
  accuracies = clustering.clustering_accuracies(
      jax.random.key(0), x, rng.integers(0, NUM_CLASSES, 1000), NUM_CLASSES)
  # The best matching of 10 arbitrary clusters beats 0.1 a little, not more.
  assert accuracies['kmeans'] < 0.2 and accuracies['gmm'] < 0.2
