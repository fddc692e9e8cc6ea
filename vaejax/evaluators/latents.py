"""What a representation holds (`config.eval.extras`): latent diagnostics,
a linear probe and clustering, each also on pixels for comparison.

* 'diagnostics': reconstruction error and -log p(x | z) at the
  reconstruction's code; active units (Burda et al., 2016) of the
  representation; for a factorised posterior, KL per latent dimension.
* 'linear_probe': logistic regression on frozen representations
  (`vaejax.analysis.probes`), and on raw pixels.
* 'clustering': k-means and EM-GMM cluster accuracy
  (`vaejax.analysis.clustering`) of the representations and of pixel PCA.
"""
import jax.numpy as jnp
import numpy as np

from vaejax.analysis import clustering
from vaejax.analysis import pca
from vaejax.analysis import probes
from vaejax.evaluators import spec

ACTIVE_UNIT_THRESHOLD = 0.01


def active_units(means, threshold=ACTIVE_UNIT_THRESHOLD):
  """Number of latent dimensions u with Cov_x(E_q[z_u | x]) > threshold.

  A dimension whose posterior mean hardly moves with x carries no
  information about x: it has collapsed to the prior (Burda et al., 2016).
  `means` is [N, D]; the variance is over the N examples.
  """
  variances = np.var(np.asarray(means, np.float64), axis=0)
  return int(np.sum(variances > threshold))


def diagnostics_metrics(evaluator, variables, images, settings):
  """Latent diagnostics and reconstruction error on the held-out examples.

  * `kl_dim_<j>`: mean over examples of KL(q(z_j | x) || p(z_j)); they sum
    to the objective's `kl` (families with `posterior_kl_per_dim`).
  * `active_units` of `latent_dims` (see `active_units`).
  * `reconstruction_mse`: per-pixel squared error between the inputs and the
    family's reconstruction; `reconstruction_nll_at_mean`: -log p(x | z) at
    the reconstruction's code, in nats per example.
  """
  del settings
  family = evaluator.family
  with_kl = family.has('posterior_kl_per_dim')

  def codes_and_errors(variables, images, positions):
    x, keys = evaluator.inputs(images, positions)
    squared_error = jnp.square(family.reconstruct(variables, x, keys) - x)
    values = {'squared_error': jnp.mean(
                  squared_error.reshape(x.shape[0], -1), axis=-1),
              'nll_at_mean': family.reconstruction_nll(variables, x, keys),
              'code': family.represent(variables, x)}
    if with_kl:
      values['kl_per_dim'] = family.posterior_kl_per_dim(variables, x)
    return values

  per_example = evaluator.map_split(codes_and_errors, variables, images)
  latent_dims = per_example['code'].shape[1]
  metrics = {
      'reconstruction_mse': float(np.mean(per_example['squared_error'])),
      'reconstruction_nll_at_mean': float(np.mean(per_example['nll_at_mean'])),
      'active_units': active_units(per_example['code']),
      'latent_dims': latent_dims,
  }
  if with_kl:
    width = len(str(latent_dims - 1))
    metrics.update({
        f'kl_dim_{j:0{width}d}': float(kl)
        for j, kl in enumerate(np.mean(per_example['kl_per_dim'], axis=0))})
  return metrics


def pixel_features(images):
  """uint8 images [N, H, W, C] -> intensities in [0, 1], flattened [N, HWC]:
  the raw-pixel baseline the representations are compared with."""
  return np.asarray(images, np.float32).reshape(len(images), -1) / 255.0


def linear_probe_metrics(evaluator, variables, images, settings):
  """Linear-probe accuracy on frozen representations, and on raw pixels.

  A logistic regression (`probes.fit_linear_probe`) is fitted on the first
  `probe_train_examples` training examples and scored on `images`. Training
  images go through the same fixed-key transform as held-out ones
  (binarised once, the same way every time), so the probe is deterministic.
  """
  train = evaluator.exp.dataset.train
  train_images = train.images[:settings.probe_train_examples]
  train_labels = train.labels[:settings.probe_train_examples]
  test_labels = evaluator.eval_labels(images)
  num_classes = evaluator.exp.dataset.num_classes
  latent_accuracy = probes.linear_probe_accuracy(
      evaluator.representations(variables, train_images), train_labels,
      evaluator.representations(variables, images), test_labels,
      num_classes)
  pixel_accuracy = probes.linear_probe_accuracy(
      pixel_features(train_images), train_labels, pixel_features(images),
      test_labels, num_classes)
  return {'probe_accuracy_latent': latent_accuracy,
          'probe_accuracy_pixels': pixel_accuracy,
          'probe_train_examples': len(train_images)}


def clustering_metrics(evaluator, variables, images, settings):
  """Clustering accuracy of k-means and a diagonal GMM (EM), one cluster per
  class, on the held-out representations and on the top `pixel_pca_dims`
  principal components of their pixels (PCA keeps EM on pixels fast and well
  conditioned; constant border pixels would make diagonal variances
  degenerate)."""
  labels = evaluator.eval_labels(images)
  num_classes = evaluator.exp.dataset.num_classes
  key = evaluator.analysis_key
  latent = clustering.clustering_accuracies(
      key, evaluator.representations(variables, images), labels,
      num_classes)
  pixel_pca = pca.pca_project(pixel_features(images), settings.pixel_pca_dims)
  pixels = clustering.clustering_accuracies(key, pixel_pca, labels,
                                            num_classes)
  return {'kmeans_accuracy_latent': latent['kmeans'],
          'gmm_accuracy_latent': latent['gmm'],
          'kmeans_accuracy_pixel_pca': pixels['kmeans'],
          'gmm_accuracy_pixel_pca': pixels['gmm'],
          'pixel_pca_dims': pixel_pca.shape[1]}


DIAGNOSTICS = spec.Evaluation(
    diagnostics_metrics,
    requires=('represent', 'reconstruct', 'reconstruction_nll'))
LINEAR_PROBE = spec.Evaluation(
    linear_probe_metrics, requires=('represent',), needs_labels=True,
    settings=('probe_train_examples',))
CLUSTERING = spec.Evaluation(
    clustering_metrics, requires=('represent',), needs_labels=True,
    settings=('pixel_pca_dims',))
