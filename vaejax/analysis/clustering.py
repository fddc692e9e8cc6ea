"""Clustering accuracy: do the classes form clusters in a representation?

k-means and a diagonal Gaussian mixture fitted by EM with one cluster per
class, scored by the best one-to-one matching of clusters to labels
(unsupervised). Seeded by an explicit key, so deterministic.
"""
import jax
import numpy as np

from vaejax.analysis import gmm
from vaejax.analysis import kmeans as kmeans_lib
from vaejax.analysis import pca
from vaejax.analysis import probes


def clustering_accuracies(key, features, labels, num_clusters,
                          num_restarts=10, max_steps=100):
  """Cluster accuracy of k-means and of a diagonal GMM fitted by EM.

  k-means keeps the lowest-inertia run of `num_restarts` k-means++ seedings
  drawn from `key` (scikit-learn's n_init: one seeding can merge two clusters
  and split another). The GMM starts from those clusters (scikit-learn's
  default initialisation), so it refines them rather than falling into a
  worse optimum from a cruder start; each example goes to its most
  responsible component. Features are used as given (not standardised):
  rescaling would blow up directions the representation barely uses, such as
  collapsed latent dimensions.

  Returns {'kmeans': accuracy, 'gmm': accuracy}.
  """
  features = pca.flatten_features(features)
  labels = np.asarray(labels)
  probes.check_features_and_labels(features, labels, 'clustering_accuracies')
  runs = [kmeans_lib.kmeans(restart_key, features, num_clusters, max_steps)
          for restart_key in jax.random.split(key, num_restarts)]
  clusters = min(runs, key=lambda run: float(run.inertia))
  mixture, _ = gmm.fit_gmm(
      key, features, num_clusters, 'diag', max_steps,
      init=gmm.init_gmm_from_means(features, clusters.centers, 'diag'))
  return {
      'kmeans': kmeans_lib.cluster_accuracy(clusters.assignments, labels),
      'gmm': kmeans_lib.cluster_accuracy(gmm.predict(mixture, features), labels),
  }
