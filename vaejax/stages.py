"""Experiments built in stages, and the trained experiment of a workdir.

`build_experiment(config)` loads the data, sees it through a first stage
when `config.data.features` names one, and builds the experiment
(`vaejax.experiment`). First stages (FEATURES), fitted or restored once,
before any training:

  * 'pca': the top `config.data.feature_dim` principal components of the
    pixels (scaled to [0, 1]), fitted on the training split;
  * 'vae_latents': `represent` (the family contract) of the model trained in
    `config.data.features_workdir`: posterior means of a VAE, codes of an
    autoencoder;
  * 'vq_codes': the integer code grids (`code_grid`) of the VQ-VAE trained
    in `config.data.features_workdir`, the data of a PixelCNN prior.

A second stage trains in the one loop on the first stage's outputs: float
feature vectors [N, D] or integer code grids [N, h, w] pass alike
(`config.data.transform = 'features'`). The restored first stage
(`FirstStage`: its experiment, state and family) is kept as the
experiment's `first_stage`, so a second stage can decode its samples with
the first stage's decoder.

`restore(workdir)` is the one way to get the trained experiment of a
workdir (its config.json and newest readable checkpoint); train, evaluate,
soak and the notebooks use it, and so does a first stage, which is why it
lives here: a workdir's experiment may itself be built on another workdir.
(The Stage-1/Stage-2 split follows big_vision's UViM, whose second stage
names the first stage's config and checkpoint: `config.oracle`.)
"""
import dataclasses
import logging
import os
from typing import Any, Callable

import numpy as np

from vaejax import checkpoint
from vaejax import data as data_lib
from vaejax import errors
from vaejax import evaluators
from vaejax import experiment as experiment_lib
from vaejax import registry
from vaejax import workdir as workdir_lib
from vaejax.analysis import pca
from vaejax.data.sources import Split


@dataclasses.dataclass
class Trained:
  """A restored experiment and its train state (the newest readable
  checkpoint of `workdir`)."""
  workdir: str
  exp: experiment_lib.Experiment
  state: Any

  @property
  def step(self):
    return int(self.state['step'])

  @property
  def variables(self):
    return evaluators.variables_of(self.evaluated_state)

  @property
  def evaluated_state(self):
    """The state to evaluate: the best of an early-stopped run."""
    return experiment_lib.best_state(self.state)


@dataclasses.dataclass
class FirstStage:
  """What a first stage gives a second: a map from images to features, and
  (for a trained first stage) the restored run itself."""
  extract: Callable[[np.ndarray], np.ndarray]
  description: str
  trained: Trained | None = None
  # The trained first stage's evaluator (its transform and fixed keys).
  evaluator: Any = None


def open_checkpoints(workdir, config):
  """A checkpoint manager for `workdir` that has a checkpoint to restore.

  Checks before creating the manager, which would otherwise create an empty
  checkpoint directory.
  """
  directory = workdir_lib.checkpoint_dir(workdir)
  manager = None
  if os.path.isdir(directory):
    manager = checkpoint.create_manager(workdir, config.checkpoints_to_keep)
  if manager is None or manager.latest_step() is None:
    raise errors.UserError(
        f'{workdir} has no checkpoint to restore (nothing in {directory}). '
        f'Train until the first checkpoint (config.checkpoint_every steps, '
        f'or the end of training): python -m vaejax.main --config '
        f'experiments/vae.py --workdir {workdir}')
  return manager


def restore(workdir, config=None, dataset=None):
  """The trained experiment of `workdir`: its saved config (or `config`, a
  version of it with other evaluation settings) and newest readable
  checkpoint. Nothing in the workdir is changed."""
  config = config or workdir_lib.load_config(workdir)
  manager = open_checkpoints(workdir, config)
  try:
    exp = build_experiment(config, dataset)
    state = checkpoint.restore_readable(
        manager, experiment_lib.init_state(exp), workdir, config)
  finally:
    manager.close()
  return Trained(workdir, exp, state)


def pca_stage(config, dataset):
  fitted = pca.fit_pca(dataset.train.images, config.data.feature_dim)
  return FirstStage(fitted, f'PCA to {config.data.feature_dim} dims')


def trained_stage(config, dataset):
  """`represent` of the model trained in `config.data.features_workdir`.

  Images go through the first stage's own transform with its fixed
  evaluation keys, so binarised inputs are drawn once, as in its evaluation.
  """
  return represented(*restore_first_stage(config, dataset, 'represent'),
                     'latent means')


def trained_features(workdir):
  """`represent` of the model trained in `workdir` (its own data, transform
  and fixed evaluation keys) as a `FirstStage` mapping uint8 images to
  features: the feature space of the sample-quality evaluations, passed to
  `evaluators.build` by the train loop and the evaluation command (the
  evaluators sit below this module and cannot restore a workdir
  themselves)."""
  return represented(*checked(
      restore(workdir), 'represent',
      'config.eval.sample_quality_classifier_workdir',
      'the feature extractor of the sample-quality metrics'),
                     'penultimate features')


def represented(trained, evaluator, what):
  """The `represent` of a restored run (with its evaluator) as a
  `FirstStage`."""
  def extract(images):
    return evaluator.representations(trained.variables, images)

  return FirstStage(extract, (
      f'{what} of the {trained.exp.config.model.name} in '
      f'{trained.workdir} (step {trained.step})'), trained, evaluator)


def checked(trained, ability, config_key, purpose):
  """(`trained`, its evaluator); an error naming `config_key` when its
  family lacks `ability`."""
  reason = trained.exp.family.missing((ability,))
  if reason:
    raise errors.ConfigError(
        f'{config_key}={trained.workdir}: {reason}, so it cannot be '
        f'{purpose}.')
  return trained, evaluators.build(trained.exp)


def restore_first_stage(config, dataset, ability):
  """The run in `config.data.features_workdir` and its evaluator, checked
  to have `ability`."""
  workdir = config.data.features_workdir
  if not workdir:
    raise errors.ConfigError(
        f'config.data.features={config.data.features!r} needs '
        f'config.data.features_workdir: the workdir of a trained model.')
  return checked(restore(workdir, dataset=dataset), ability,
                 'config.data.features_workdir', 'this first stage')


def code_grid_stage(config, dataset):
  """The integer code grids [N, h, w] (`code_grid`) of the VQ-VAE trained in
  `config.data.features_workdir`, each split encoded once with the first
  stage's transform and fixed evaluation keys (binarised inputs drawn once,
  as in its evaluation, so the codes and its reconstruction NLL of the
  held-out split belong to the same inputs)."""
  trained, evaluator = restore_first_stage(config, dataset, 'code_grid')
  family = trained.exp.family
  first_codes = trained.exp.config.model.num_codes
  if config.model.num_codes != first_codes:
    raise errors.ConfigError(
        f'config.model.num_codes={config.model.num_codes}, but the VQ-VAE in '
        f'{trained.workdir} has {first_codes} codes: set '
        f'--config.model.num_codes={first_codes}.')

  def code_grids(variables, images, positions):
    x, _ = evaluator.inputs(images, positions)
    return family.code_grid(variables, x).astype(np.int32)

  def extract(images):
    return evaluator.map_split(code_grids, trained.variables, images)

  return FirstStage(extract, (
      f'code grids of the {trained.exp.config.model.name} in '
      f'{trained.workdir} (step {trained.step})'), trained, evaluator)


FEATURES = registry.Registry('feature extractor', {
    'pca': pca_stage,
    'vae_latents': trained_stage,
    'vq_codes': code_grid_stage,
}, 'config.data.features')


def _check_stage_config(config):
  name = config.data.features
  if not name:
    return None
  stage = FEATURES.get(name)
  if config.data.transform != 'features':
    raise errors.ConfigError(
        f'config.data.features={name!r} gives feature vectors; set '
        f'config.data.transform="features" (not '
        f'{config.data.transform!r}).')
  return stage


def staged_dataset(dataset, first_stage):
  """`dataset` with every split's images replaced by the first stage's
  features (float vectors stay float32, integer codes keep their type)."""
  def split_features(split):
    if split is None:
      return None
    features = np.asarray(first_stage.extract(split.images))
    if np.issubdtype(features.dtype, np.floating):
      features = features.astype(np.float32)
    return Split(features, split.labels)

  train = split_features(dataset.train)
  return dataclasses.replace(
      dataset, train=train, validation=split_features(dataset.validation),
      test=split_features(dataset.test),
      source=f'{dataset.source}, {first_stage.description}',
      image_shape=train.images.shape[1:])


def build_experiment(config, dataset=None):
  """Checks the config, loads the data (unless given), runs the first stage
  if any, and builds the experiment. Every name and the evaluation settings
  are checked before any data is loaded."""
  experiment_lib.check_names(config)
  evaluators.check_config(config)
  stage = _check_stage_config(config)
  dataset = dataset or data_lib.load_dataset(config.data)
  first_stage = None
  if stage is not None:
    first_stage = stage(config, dataset)
    logging.info('First stage: %s.', first_stage.description)
    dataset = staged_dataset(dataset, first_stage)
  pretrained = None
  if config.init_from:
    pretrained = restore(config.init_from).variables['params']
    logging.info('Parameters to initialise from: %s.', config.init_from)
  return experiment_lib.build_experiment(config, dataset, first_stage,
                                         pretrained)
