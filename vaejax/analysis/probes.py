"""Linear probes: how much a frozen representation says about the labels.

Linear-probe accuracy on feature matrices [N, D] with integer class labels:
multinomial logistic regression fitted on training features, scored on test
features (is the class linearly readable from the code?), so the same number
can be computed for VAE latent means, autoencoder codes, or raw pixels as a
baseline. Deterministic: the probe starts from zero weights and takes
full-batch L-BFGS steps (optax).
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vaejax.analysis import pca


# Per-feature standard deviations below this are treated as this, so a
# constant feature (an unused latent, a border pixel) stays finite.
MIN_FEATURE_SCALE = 1e-6


class LinearProbe(NamedTuple):
  """A logistic-regression classifier on standardised features."""
  feature_mean: np.ndarray  # [D], of the training features.
  feature_scale: np.ndarray  # [D], their standard deviation.
  weights: jax.Array  # [D, num_classes]
  biases: jax.Array  # [num_classes]

  def logits(self, features):
    standardized = (np.asarray(features, np.float32) - self.feature_mean
                    ) / self.feature_scale
    return standardized @ self.weights + self.biases

  def predict(self, features):
    return np.asarray(jnp.argmax(self.logits(features), axis=-1))


def check_features_and_labels(features, labels, what):
  if len(features) != len(labels):
    raise ValueError(f'{what}: {len(features)} feature rows but '
                     f'{len(labels)} labels; give one label per example.')
  if not np.all(np.isfinite(features)):
    raise ValueError(f'{what}: the features contain NaN or inf.')


@functools.partial(jax.jit, static_argnames=('num_classes', 'num_steps'))
def _fit_logistic_regression(features, labels, num_classes, num_steps, l2):
  """Full-batch L-BFGS (optax, zoom line search) on the mean cross-entropy
  plus l2/2 ||W||^2; the penalty keeps the weights finite when the classes
  are linearly separable."""
  num_features = features.shape[1]

  def loss(params):
    weights, biases = params
    logits = features @ weights + biases
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(
        logits, labels)
    return jnp.mean(cross_entropy) + 0.5 * l2 * jnp.sum(jnp.square(weights))

  optimizer = optax.lbfgs()
  loss_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry, _):
    params, opt_state = carry
    value, grad = loss_and_grad(params, state=opt_state)
    updates, opt_state = optimizer.update(
        grad, opt_state, params, value=value, grad=grad, value_fn=loss)
    return (optax.apply_updates(params, updates), opt_state), None

  params = (jnp.zeros((num_features, num_classes), features.dtype),
            jnp.zeros((num_classes,), features.dtype))
  (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)),
                                None, length=num_steps)
  return params


def fit_linear_probe(features, labels, num_classes, num_steps=200, l2=1e-4):
  """Fits a linear probe on `features` [N, ...] with labels in [0, num_classes).

  Features are standardised with their own mean and standard deviation
  (stored in the probe and reused for test features), which makes one l2
  weight and one optimiser setting suit latents and pixels alike.
  """
  features = pca.flatten_features(features)
  labels = np.asarray(labels, np.int32)
  check_features_and_labels(features, labels, 'fit_linear_probe')
  feature_mean = features.mean(axis=0)
  feature_scale = np.maximum(features.std(axis=0), MIN_FEATURE_SCALE)
  weights, biases = _fit_logistic_regression(
      (features - feature_mean) / feature_scale, labels, num_classes,
      num_steps, l2)
  return LinearProbe(feature_mean, feature_scale, weights, biases)


def accuracy(predicted, labels):
  return float(np.mean(np.asarray(predicted) == np.asarray(labels)))


def linear_probe_accuracy(train_features, train_labels, test_features,
                          test_labels, num_classes, num_steps=200, l2=1e-4):
  """Test accuracy of a linear probe fitted on the training features."""
  probe = fit_linear_probe(train_features, train_labels, num_classes,
                           num_steps, l2)
  test_features = pca.flatten_features(test_features)
  check_features_and_labels(test_features, test_labels,
                             'linear_probe_accuracy')
  return accuracy(probe.predict(test_features), test_labels)
