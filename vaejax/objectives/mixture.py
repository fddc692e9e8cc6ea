"""EM objectives: each train step is one EM iteration (Dempster et al., 1977).

With the shared signature `loss_fn(model, variables, batch, keys, step,
train) -> (per_example_loss, metrics, model_state)`, a step

  1. takes the parameters the model derives from its stored statistics (the
     M-step of the previous iteration); in step 0 it initialises them from
     the data instead (see `first_step_parameters`);
  2. runs the E-step on the batch, returning -log p as the per-example loss
     (so the loop's loss is the mean negative log-likelihood, which EM never
     increases) and the new sufficient statistics as model state.

The train step averages the model state over devices, which pools the
statistics exactly: with the whole training set as the batch this is exact
EM on any number of devices. There are no gradient parameters.

These objectives run under the train step's `shard_map`: the
initialisation gathers the batch over the `data` axis, and the mixture
classifier's M-step for its label weights averages Q over it.
"""
import jax
import jax.numpy as jnp
from jax import lax

from vaejax import sharding
from vaejax.analysis import gmm
from vaejax.analysis import mixture_classifier

# The non-parameter collection that holds a mixture's EM statistics: the
# objectives return it as model state, `vaejax.models.mixture` declares it.
STATISTICS = 'em_stats'
# The mixture classifier's label weights and their optimiser state.
LABEL_MODEL = 'label_model'


def global_batch(x):
  """The whole global batch [B, ...] on every device, in position order.

  A sum over devices of each device's block placed in zeros (exact: the
  other terms are zero) rather than `lax.all_gather`, whose result shard_map
  types as varying across devices: the parameters made from it must be the
  same on every device, like the stored ones.
  """
  local_size = x.shape[0]
  placed = jnp.zeros((lax.axis_size(sharding.DATA_AXIS) * local_size,
                      *x.shape[1:]), x.dtype)
  placed = lax.dynamic_update_slice_in_dim(
      placed, x, lax.axis_index(sharding.DATA_AXIS) * local_size, axis=0)
  return lax.psum(placed, sharding.DATA_AXIS)


def first_example_key(keys):
  """The key of the example at position 0 of the global batch, everywhere."""
  key_data = global_batch(jax.random.key_data(keys[:1]))[0]
  return jax.random.wrap_key_data(key_data, impl=jax.random.key_impl(keys))


def first_step_parameters(step, stored, initialise, x, keys):
  """`initialise(key, global batch)` in step 0, else the stored parameters.

  The model's init only sees a dummy input, so EM starts from the data in
  its first step: k-means++ (or k-means) on the whole global batch, seeded
  with the first example's key. Gathering the batch makes the start the same
  for any device count, and a resumed run (step > 0) keeps its statistics.
  """
  return lax.cond(step == 0,
                  lambda: initialise(first_example_key(keys), global_batch(x)),
                  lambda: stored)


def binary_labels(labels, positive_classes):
  """1 for labels in `positive_classes`, else 0."""
  return jnp.isin(labels, jnp.asarray(positive_classes)).astype(jnp.int32)


def make_em_gmm(config):
  """EM for `models.mixture.GaussianMixtureModel`; loss = -log p(x).

  Initialisation as `gmm.init_gmm`: k-means++ means, the data covariance for
  every component, equal weights.
  """
  del config  # The mixture's settings are in config.model.

  def loss_fn(model, variables, batch, keys, step, train):
    x = batch['inputs']
    mixture = model.apply(variables, method=model.mixture)
    if not train:
      log_likelihoods = gmm.log_likelihood(mixture, x)
      return -log_likelihoods, {'log_likelihood': log_likelihoods}, {}

    def initialise(key, all_x):
      return gmm.init_gmm(key, all_x, model.num_components,
                         model.covariance_type, model.reg_covar)

    mixture = first_step_parameters(step, mixture, initialise, x, keys)
    log_resp, log_likelihoods = gmm.e_step_per_example(mixture, x)
    statistics = gmm.sufficient_statistics(x, jnp.exp(log_resp),
                                          model.covariance_type)
    return (-log_likelihoods, {'log_likelihood': log_likelihoods},
            {STATISTICS: statistics._asdict()})

  return loss_fn


def make_em_mixture_classifier(config):
  """Generalised EM for `models.mixture.MixtureClassifierModel`.

  The binary label is 1 for the classes in `config.positive_classes`. The
  training loss is -log p(x, y); the E-step uses the label. The M-step sets
  π, μ, σ² from the pooled statistics (next step) and takes
  `config.gradient_steps_per_m_step` Adam steps (learning rate
  `config.label_learning_rate`) on the logistic weights, each kept only if it
  raises Q, with Q averaged over devices so every device takes the same
  steps. Initialisation as `mixture_classifier.init_mixture_classifier`.

  Evaluation batches carry no labels, so the held-out loss is -log p(x).
  """
  positive_classes = tuple(config.positive_classes)
  gradient_steps = config.gradient_steps_per_m_step
  learning_rate = config.label_learning_rate

  def loss_fn(model, variables, batch, keys, step, train):
    x = batch['inputs']
    if not train:
      log_likelihoods = model.apply(variables, x)
      return -log_likelihoods, {'log_likelihood_features': log_likelihoods}, {}

    def initialise(key, all_x):
      return mixture_classifier.init_mixture_classifier(key, all_x, model.num_components,
                                        model.reg_covar)

    classifier = first_step_parameters(
        step, model.apply(variables, method=model.classifier), initialise, x,
        keys)
    y = binary_labels(batch['label'], positive_classes).astype(x.dtype)
    responsibilities, log_likelihoods = mixture_classifier.classifier_e_step_per_example(
        classifier, x, y)
    statistics = gmm.sufficient_statistics(x, responsibilities, 'diag')

    def negative_q(label_parameters):
      return lax.pmean(
          mixture_classifier.label_negative_q(label_parameters, x, y,
                                              responsibilities),
          sharding.DATA_AXIS)

    (label_biases, label_weights), optimizer_state = (
        mixture_classifier.label_weights_m_step(
            negative_q, (classifier.label_biases, classifier.label_weights),
            model.apply(variables, method=model.label_optimizer_state),
            gradient_steps, learning_rate))
    correct = ((mixture_classifier.predict_proba(classifier, x) > 0.5)
               == (y == 1))
    metrics = {'log_likelihood_joint': log_likelihoods,
               'accuracy': correct.astype(jnp.float32)}
    model_state = {
        STATISTICS: statistics._asdict(),
        LABEL_MODEL: {
            'label_biases': label_biases,
            'label_weights': label_weights,
            'optimizer_state': optimizer_state,
        },
    }
    return -log_likelihoods, metrics, model_state

  return loss_fn
