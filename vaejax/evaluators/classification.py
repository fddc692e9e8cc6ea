"""Evaluation of a classifier family (`config.eval.extras` 'classification').

The family's `classify` logits on the held-out examples against their
labels: accuracy, -log p(y | x), and the accuracy of each class (the
objective's own `accuracy` and `cross_entropy` metrics are the same numbers,
computed by the objective; this asks the family, as every evaluation does,
so it also scores a classification head that another objective trained).
"""
import jax
import numpy as np

from vaejax.evaluators import spec


def classification_metrics(evaluator, variables, images, settings):
  """`test_accuracy`, `test_cross_entropy` and `class_accuracy_<k>`."""
  del settings
  family = evaluator.family

  def log_probabilities(variables, images, positions):
    x, _ = evaluator.inputs(images, positions)
    return jax.nn.log_softmax(family.classify(variables, x), axis=-1)

  log_probs = evaluator.map_split(log_probabilities, variables, images)
  labels = np.asarray(evaluator.eval_labels(images), np.int64)
  correct = np.argmax(log_probs, axis=-1) == labels
  metrics = {
      'test_accuracy': float(np.mean(correct)),
      'test_cross_entropy': float(
          -np.mean(log_probs[np.arange(len(labels)), labels])),
  }
  width = len(str(log_probs.shape[1] - 1))
  for k in range(log_probs.shape[1]):
    in_class = labels == k
    if in_class.any():
      metrics[f'class_accuracy_{k:0{width}d}'] = float(
          np.mean(correct[in_class]))
  return metrics


CLASSIFICATION = spec.Evaluation(
    classification_metrics, requires=('classify',), needs_labels=True)
