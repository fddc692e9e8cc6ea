"""Gaussian-mixture models fitted by EM inside the one train loop, and their
families (`vaejax.models.family`).

EM has no gradient parameters: a model's state is the normalised sufficient
statistics of its last E-step, kept in the non-parameter collection
`em_stats`, and its parameters (π, μ, Σ) are derived from them by the M-step
(`vaejax.analysis.gmm.m_step_from_statistics`). Because the statistics are
means over examples, the train step's mean over devices pools them exactly,
so EM with the whole training set as the batch is exact EM on any number of
devices.
The objectives in `vaejax.objectives.mixture` run the E-step.

Inputs are feature vectors [B, D] (`config.data.features`, `vaejax.stages`),
not images.
"""
import flax.linen as nn
import jax.numpy as jnp

from vaejax.analysis import gmm
from vaejax.analysis import mixture_classifier as classifier_lib
from vaejax import errors
from vaejax.models import family
from vaejax.objectives.mixture import LABEL_MODEL
from vaejax.objectives.mixture import STATISTICS



def initial_statistics(num_components, num_features, covariance_type):
  """Statistics whose M-step gives equal weights, zero means and Σ = I.

  A placeholder with the right shapes: the objectives replace it by a
  k-means++ (or k-means) initialisation from the data in the first step.
  """
  weights = jnp.full((num_components,), 1.0 / num_components)
  identity = (jnp.ones((num_features,)) if covariance_type == 'diag'
              else jnp.eye(num_features))
  return gmm.SufficientStatistics(
      weights=weights,
      weighted_sums=jnp.zeros((num_components, num_features)),
      weighted_second_moments=weights.reshape(
          (num_components,) + (1,) * identity.ndim) * identity)


def declare_statistics(module, covariance_type):
  """Declares the `em_stats` variables of `module` (in its setup)."""
  statistics = initial_statistics(module.num_components, module.num_features,
                                  covariance_type)
  return gmm.SufficientStatistics(*(
      module.variable(STATISTICS, name, lambda value=value: value).value
      for name, value in statistics._asdict().items()))


class GaussianMixtureModel(nn.Module):
  """π_k N(μ_k, Σ_k) with diagonal or full Σ_k, held as EM statistics."""
  num_components: int
  num_features: int
  covariance_type: str = 'diag'
  reg_covar: float = 1e-6

  def setup(self):
    self.statistics = declare_statistics(self, self.covariance_type)

  def mixture(self) -> gmm.GaussianMixture:
    """The M-step: parameters from the statistics of the last E-step."""
    return gmm.m_step_from_statistics(self.statistics, self.reg_covar)

  def predict(self, x):
    """[B] most responsible component of each example."""
    return gmm.predict(self.mixture(), x)

  def __call__(self, x):
    """[B] log p(x) of feature vectors x [B, D]."""
    return gmm.log_likelihood(self.mixture(), x)


class MixtureClassifierModel(nn.Module):
  """The Gaussian-mixture linear classifier, held as EM state.

  Z ~ Cat(π), X | Z=k ~ N(μ_k, σ_k² I), P(Y=1 | X, Z=k) = sigmoid(w_e,k +
  w_x,k·X).

  π, μ and σ² come from diagonal EM statistics (σ_k² is the mean of the
  diagonal variances). The logistic weights have no closed-form M-step, so
  they are state of their own (collection `label_model`), together with the
  Adam state that `analysis.mixture_classifier.label_weights_m_step` carries between
  M-steps.
  """
  num_components: int
  num_features: int
  reg_covar: float = 1e-6

  def setup(self):
    self.statistics = declare_statistics(self, 'diag')
    label_parameters = (jnp.zeros((self.num_components,)),
                        jnp.zeros((self.num_components, self.num_features)))
    self.label_biases = self.variable(
        LABEL_MODEL, 'label_biases', lambda: label_parameters[0]).value
    self.label_weights = self.variable(
        LABEL_MODEL, 'label_weights', lambda: label_parameters[1]).value
    self.optimizer_state = self.variable(
        LABEL_MODEL, 'optimizer_state',
        lambda: classifier_lib.init_label_optimizer_state(
            label_parameters)).value

  def classifier(self) -> classifier_lib.MixtureClassifier:
    """π, μ, σ² by the closed-form M-step, and the current label weights."""
    mixture = gmm.m_step_from_statistics(self.statistics, self.reg_covar)
    return classifier_lib.MixtureClassifier(
        log_weights=mixture.log_weights, means=mixture.means,
        variances=jnp.mean(mixture.covariances, axis=1),
        label_biases=self.label_biases, label_weights=self.label_weights)

  def label_optimizer_state(self):
    return self.optimizer_state

  def predict_proba(self, x):
    """[B] P(Y=1 | X = x)."""
    return classifier_lib.predict_proba(self.classifier(), x)

  def __call__(self, x):
    """[B] log p(x) under the X-part of the model (the label unknown)."""
    classifier = self.classifier()
    cluster_mixture = gmm.GaussianMixture(
        classifier.log_weights, classifier.means,
        jnp.broadcast_to(classifier.variances[:, None], classifier.means.shape))
    return gmm.log_likelihood(cluster_mixture, x)


_NOT_AN_IMAGE_MODEL = {
    'represent': 'a mixture fitted to fixed features learns no representation',
    'reconstruct': 'a mixture does not reconstruct its inputs',
    'reconstruction_nll': 'a mixture does not reconstruct its inputs',
    'sample': 'its samples are feature vectors, not images',
    'log_likelihood_bound': 'its log-likelihood is of features, not images '
                            '(the objective reports it as log_likelihood)',
    'encode': 'a mixture has no continuous code',
    'decode': 'a mixture has no decoder',
    'posterior_kl_per_dim': 'a mixture has no per-dimension posterior',
    'prior_grid': 'a mixture has no continuous prior',
    'code_grid': 'a mixture has no code grid',
    'decode_code_grid': 'a mixture has no decoder',
    'code_log_prob': 'a mixture models features, not code grids',
}
_NOT_A_SOFTMAX_CLASSIFIER = (
    'a mixture gives no class logits (the mixture classifier\'s binary '
    'P(Y=1 | x) is positive_probability)')


class GaussianMixtureFamily(family.Family):
  """The contract for `GaussianMixtureModel`: cluster assignments."""
  LACKING = dict(_NOT_AN_IMAGE_MODEL, positive_probability=(
      'a Gaussian mixture has no labels (use mixture_classifier)'),
                 classify=_NOT_A_SOFTMAX_CLASSIFIER)

  def assign_clusters(self, variables, features):
    return self.model.apply(variables, features, method=self.model.predict)


class MixtureClassifierFamily(family.Family):
  """The contract for `MixtureClassifierModel`: P(Y=1 | x)."""
  LACKING = dict(_NOT_AN_IMAGE_MODEL, assign_clusters=(
      "the classifier's clusters are fitted jointly with the labels"),
                 classify=_NOT_A_SOFTMAX_CLASSIFIER)

  def positive_probability(self, variables, features):
    return self.model.apply(variables, features,
                            method=self.model.predict_proba)


def _num_features(name, image_shape):
  if len(image_shape) != 1:
    raise errors.ConfigError(
        f'Model {name!r} fits feature vectors [N, D], but the data has images '
        f'of shape {tuple(image_shape)}. Set config.data.features (e.g. '
        f'"pca") and config.data.transform="features".')
  return image_shape[0]


def gaussian_mixture(config, image_shape, likelihood):
  if config.covariance_type not in gmm.COVARIANCE_TYPES:
    raise errors.ConfigError(
        f'Unknown config.model.covariance_type {config.covariance_type!r}; '
        f'known types: {", ".join(gmm.COVARIANCE_TYPES)}.')
  model = GaussianMixtureModel(
      num_components=config.num_components,
      num_features=_num_features('gaussian_mixture', image_shape),
      covariance_type=config.covariance_type,
      reg_covar=config.reg_covar)
  return GaussianMixtureFamily(model, likelihood, 'gaussian_mixture')


def mixture_classifier(config, image_shape, likelihood):
  model = MixtureClassifierModel(
      num_components=config.num_components,
      num_features=_num_features('mixture_classifier', image_shape),
      reg_covar=config.reg_covar)
  return MixtureClassifierFamily(model, likelihood, 'mixture_classifier')
