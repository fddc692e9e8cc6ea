"""k-means with k-means++ seeding, and cluster accuracy against labels.

`kmeans` runs Lloyd's iterations in one jitted `jax.lax.while_loop`;
`kmeans_plusplus_init` seeds it (and the Gaussian mixtures of
`vaejax.analysis.gmm`); `cluster_accuracy` scores clusters of learned
latents against class labels by the best one-to-one matching.
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from vaejax.analysis import inputs


class KMeansResult(NamedTuple):
  centers: jax.Array  # [K, D]
  assignments: jax.Array  # [N], index of the nearest center.
  inertia: jax.Array  # [], sum of squared distances to assigned centers.



def squared_distances(x: jax.Array, centers: jax.Array) -> jax.Array:
  """[N, K] squared Euclidean distances between examples and centers."""
  return jnp.sum((x[:, None, :] - centers[None, :, :])**2, axis=-1)


@functools.partial(jax.jit, static_argnames=('num_components',))
def seed_kmeans_plusplus(key, x, num_components):
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
  x = inputs.as_float_array(x)
  inputs.check_data(x, num_components)
  return seed_kmeans_plusplus(key, x, num_components)


def assign_to_centers(x, centers):
  distances = squared_distances(x, centers)
  assignments = jnp.argmin(distances, axis=1)
  inertia = jnp.sum(jnp.min(distances, axis=1))
  return assignments, inertia


@functools.partial(jax.jit, static_argnames=('num_clusters', 'max_steps'))
def run_kmeans(key, x, num_clusters, max_steps, tol):
  # As in scikit-learn, tol is relative to the mean per-feature variance of x.
  shift_tolerance = tol * jnp.mean(jnp.var(x, axis=0))

  def keep_going(state):
    _, step, squared_shift = state
    return (step < max_steps) & (squared_shift > shift_tolerance)

  def lloyd_step(state):
    centers, step, _ = state
    assignments, _ = assign_to_centers(x, centers)
    one_hot = jax.nn.one_hot(assignments, num_clusters, dtype=x.dtype)
    counts = jnp.sum(one_hot, axis=0)[:, None]
    # An empty cluster keeps its previous center.
    new_centers = jnp.where(
        counts > 0, one_hot.T @ x / jnp.maximum(counts, 1), centers)
    return new_centers, step + 1, jnp.sum((new_centers - centers)**2)

  initial_centers = seed_kmeans_plusplus(key, x, num_clusters)
  centers, _, _ = jax.lax.while_loop(
      keep_going, lloyd_step,
      (initial_centers, 0, jnp.asarray(jnp.inf, x.dtype)))
  assignments, inertia = assign_to_centers(x, centers)
  return KMeansResult(centers, assignments, inertia)


def kmeans(key: jax.Array, x, num_clusters: int, max_steps: int = 100,
           tol: float = 1e-4) -> KMeansResult:
  """Lloyd's algorithm from a k-means++ seeding drawn with `key`.

  Stops after `max_steps` or once the summed squared movement of the centers
  is at most `tol` times the mean per-feature variance of x (scikit-learn's
  rule).
  """
  x = inputs.as_float_array(x)
  inputs.check_data(x, num_clusters)
  return run_kmeans(key, x, num_clusters, max_steps, tol)



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
