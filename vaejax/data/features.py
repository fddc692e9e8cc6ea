"""A first stage: the data set seen through fixed features.

`extract_features(config, dataset)` replaces every split's images by float32
feature vectors [N, D] when `config.data.features` names an extractor, so a
second-stage model (a Gaussian mixture fitted by EM, later a prior over a
first stage's codes) trains in the one loop on a first stage's outputs. Such
configs use `config.data.transform = 'features'`, which passes the vectors
through unchanged.

Extractors (`FEATURES`), fitted or loaded once, before training:
  * 'pca': the top `config.data.feature_dim` principal components of the
    pixels (scaled to [0, 1]), fitted on the training split;
  * 'vae_latents': the posterior means E[z | x] of the VAE trained in
    `config.data.features_workdir` (its saved config and latest checkpoint).
"""
import dataclasses

import numpy as np

from vaejax import checkpoint
from vaejax import errors
from vaejax import evaluate
from vaejax import experiment
from vaejax import probes
from vaejax import registry
from vaejax.data.sources import Split


@dataclasses.dataclass(frozen=True)
class PCA:
  """x -> (x - mean) @ components for pixel vectors x in [0, 1]."""
  mean: np.ndarray  # [P]
  components: np.ndarray  # [P, D], orthonormal columns.

  def __call__(self, images):
    pixels = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return ((pixels - self.mean) @ self.components).astype(np.float32)


def fit_pca(images, num_components):
  """Principal axes of the pixels of `images`, largest variance first.

  `probes.principal_axes` with the P x P covariance accumulated in float32
  (half the memory of float64 for 60k x 784 pixels); decomposed in float64
  with signs fixed, so the features are reproducible.
  """
  pixels = images.reshape(len(images), -1).astype(np.float32) / 255.0
  if not 0 < num_components <= min(pixels.shape):
    raise errors.ConfigError(
        f'config.data.feature_dim={num_components} must be between 1 and '
        f'{min(pixels.shape)} (the number of pixels and of training '
        f'examples).')
  mean, components = probes.principal_axes(pixels, num_components,
                                           dtype=np.float32)
  return PCA(mean, components.astype(np.float32))


def pca_features(config, dataset):
  pca = fit_pca(dataset.train.images, config.data.feature_dim)
  return pca, f'PCA to {config.data.feature_dim} dims'


def vae_latent_features(config, dataset):
  """Posterior means of the VAE trained in `config.data.features_workdir`.

  (The codes, for an autoencoder.) Images go through the first stage's own
  transform with its fixed evaluation keys, so binarised inputs are drawn
  once, as in its evaluation.
  """
  workdir = config.data.get('features_workdir')
  if not workdir:
    raise errors.ConfigError(
        'config.data.features="vae_latents" needs config.data.features_workdir'
        ': the workdir of a trained VAE.')
  first_stage_config = evaluate.load_workdir_config(workdir)
  manager = evaluate.open_latest_checkpoint(workdir, first_stage_config)
  first_stage = experiment.build_experiment(first_stage_config, dataset)
  state = checkpoint.restore_readable(manager,
                                      experiment.init_state(first_stage),
                                      workdir, first_stage_config)
  manager.close()
  evaluator = evaluate.Evaluator(first_stage)
  variables = evaluate.variables_of(state)

  def encode(images):
    return evaluator.encodings(variables, images)['code']

  return encode, (f'latent means of the {first_stage_config.model.name} in '
                  f'{workdir} (step {int(state["step"])})')


FEATURES = registry.Registry('feature extractor', {
    'pca': pca_features,
    'vae_latents': vae_latent_features,
}, 'config.data.features')


def extract_features(config, dataset):
  """`dataset` with images replaced by `config.data.features` vectors.

  Returns `dataset` itself when no extractor is set.
  """
  name = config.data.get('features')
  if not name:
    return dataset
  extractor = FEATURES.get(name)
  if config.data.transform != 'features':
    raise errors.ConfigError(
        f'config.data.features={name!r} gives float feature vectors; set '
        f'config.data.transform="features" (not '
        f'{config.data.transform!r}).')
  extract, description = extractor(config, dataset)

  def split_features(split):
    if split is None:
      return None
    return Split(np.asarray(extract(split.images), np.float32), split.labels)

  train = split_features(dataset.train)
  return dataclasses.replace(
      dataset, train=train, validation=split_features(dataset.validation),
      test=split_features(dataset.test),
      source=f'{dataset.source}, {description}',
      image_shape=train.images.shape[1:])
