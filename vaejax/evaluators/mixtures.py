"""Evaluations of the Gaussian-mixture models (`config.eval.extras`).

* 'cluster_accuracy': the mixture's most responsible component against the
  class labels (best one-to-one matching, `analysis.kmeans.cluster_accuracy`) on the
  training and held-out features, with k-means on the same training features
  as the baseline. The held-out mean log-likelihood is the objective's own
  `log_likelihood` metric.
* 'mixture_classifier_accuracy': accuracy of P(Y=1 | X) > 1/2 on the binary
  task of `config.objective.positive_classes`, against a single logistic
  regression (`probes.fit_linear_probe`, optax L-BFGS) on the same features.

They ask the mixture families (`vaejax.models.mixture`) to
`assign_clusters` and for the `positive_probability`; names without `_train`
refer to the held-out split.
"""
import numpy as np

from vaejax.analysis import kmeans as kmeans_lib
from vaejax.analysis import probes
from vaejax.evaluators import spec
from vaejax.objectives import mixture as mixture_objectives


def cluster_accuracy_metrics(evaluator, variables, features, settings):
  """Cluster accuracy of the mixture (train, held-out) and of k-means."""
  del settings
  exp = evaluator.exp
  family = evaluator.family
  train = exp.dataset.train

  def most_responsible_component(variables, features, positions):
    del positions
    return family.assign_clusters(variables, features)

  def accuracy(split_features, labels):
    clusters = evaluator.map_split(most_responsible_component, variables,
                                   split_features)
    return kmeans_lib.cluster_accuracy(clusters, labels)

  kmeans = kmeans_lib.kmeans(evaluator.analysis_key, train.images,
                             family.model.num_components)
  return {
      'cluster_accuracy': accuracy(features,
                                   evaluator.eval_labels(features)),
      'cluster_accuracy_train': accuracy(train.images, train.labels),
      'kmeans_cluster_accuracy_train': kmeans_lib.cluster_accuracy(
          kmeans.assignments, train.labels),
  }


def mixture_classifier_metrics(evaluator, variables, features, settings):
  """Accuracy of the mixture classifier and of logistic regression."""
  exp = evaluator.exp
  family = evaluator.family
  train = exp.dataset.train
  positive_classes = settings.positive_classes

  def binary(labels):
    return np.asarray(mixture_objectives.binary_labels(labels,
                                                       positive_classes))

  def probability_of_positive(variables, features, positions):
    del positions
    return family.positive_probability(variables, features)

  def accuracy(split_features, labels):
    probabilities = evaluator.map_split(probability_of_positive, variables,
                                        split_features)
    return probes.accuracy(probabilities > 0.5, labels)

  train_labels = binary(train.labels)
  held_out_labels = binary(evaluator.eval_labels(features))
  logistic_regression = probes.fit_linear_probe(train.images, train_labels,
                                                num_classes=2)
  return {
      'classifier_accuracy': accuracy(features, held_out_labels),
      'classifier_accuracy_train': accuracy(train.images, train_labels),
      'logistic_regression_accuracy': probes.accuracy(
          logistic_regression.predict(features), held_out_labels),
      'logistic_regression_accuracy_train': probes.accuracy(
          logistic_regression.predict(train.images), train_labels),
      'positive_fraction': float(np.mean(held_out_labels)),
  }


CLUSTER_ACCURACY = spec.Evaluation(
    cluster_accuracy_metrics, requires=('assign_clusters',),
    needs_labels=True)
CLASSIFIER_ACCURACY = spec.Evaluation(
    mixture_classifier_metrics, requires=('positive_probability',),
    needs_labels=True, settings=('objective.positive_classes',))
