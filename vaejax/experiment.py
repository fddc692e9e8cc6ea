"""An experiment built from its config and data: mesh, model family,
objective, transform, optimiser, keys.

`build_experiment(config, dataset)` checks every name in the config and the
data before any training work. It takes the data set as given; loading it,
and seeing it through a first stage, is `vaejax.stages.build_experiment`,
which the train loop, the evaluation command and the notebooks call.
"""
import dataclasses
import logging
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vaejax import data as data_lib
from vaejax import errors
from vaejax import models
from vaejax import objectives
from vaejax import optim
from vaejax import prng
from vaejax import sharding
from vaejax.configs import common
from vaejax.data import transforms
from vaejax.models import family as family_lib
from vaejax.objectives import likelihoods


@dataclasses.dataclass
class Experiment:
  """Everything built from a config before any training work."""
  config: ml_collections.ConfigDict
  dataset: Any
  mesh: jax.sharding.Mesh
  family: family_lib.Family
  model: nn.Module
  objective: Callable
  likelihood: Any
  transform: transforms.Transform
  optimizer: optax.GradientTransformation
  keys: dict
  # `vaejax.stages.FirstStage` of a second-stage experiment, else None.
  first_stage: Any = None
  # Parameters of a trained run (`config.init_from`) that initialise the
  # subtrees of this model they match (`initial_params`).
  pretrained_params: Any = None

  @property
  def image_shape(self):
    return self.dataset.image_shape

  @property
  def num_dims(self):
    return math.prod(self.image_shape)


def check_names(config):
  """Fails fast on any unknown component name and any numeric setting out
  of its range (`configs.common.RANGES`), before data is loaded."""
  models.MODELS.get(config.model.name)
  objectives.OBJECTIVES.get(config.objective.name)
  likelihoods.LIKELIHOODS.get(config.objective.likelihood)
  transforms.TRANSFORMS.get(config.data.transform)
  optim.OPTIMIZERS.get(config.optimizer.name)
  optim.SCHEDULES.get(config.optimizer.schedule)
  data_lib.check_data_config(config.data)
  common.check_ranges(config)
  check_early_stopping(config)


def check_early_stopping(config):
  """Early stopping watches the validation loss: it needs a validation
  split and periodic evaluations (never the test split, which would make
  the test numbers a selection on the test set)."""
  patience = config.early_stopping_patience
  if not patience:
    return
  if not config.data.validation_size:
    raise errors.ConfigError(
        f'config.early_stopping_patience={patience} watches the loss on a '
        f'validation split, and config.data.validation_size=0 holds none out: '
        f'set --config.data.validation_size=N (e.g. 10000), or '
        f'--config.early_stopping_patience=0 to train all steps.')
  if not config.eval_every:
    raise errors.ConfigError(
        f'config.early_stopping_patience={patience} counts periodic '
        f'evaluations, and config.eval_every=0 runs none: set '
        f'--config.eval_every to the steps between evaluations (e.g. one '
        f'epoch).')


def check_dataset(dataset, transform_name):
  """Fails fast on examples that cannot be trained on, naming the split.

  The loaders check their files; this also covers a `Dataset` built by hand
  (a notebook) and a first stage's features. Pixel transforms need uint8
  images (0..255 by construction: a float array may be scaled to [0, 1] or
  hold NaN); 'features' needs finite values, since one NaN turns every loss
  into NaN; labels must be classes of the data set.
  """
  for split_name in ('train', 'validation', 'test'):
    split = getattr(dataset, split_name)
    if split is None:
      continue
    images = np.asarray(split.images)
    where = f'{split_name} split of {dataset.source}'
    if images.shape[1:] != tuple(dataset.image_shape):
      raise data_lib.DataError(
          f'{where}: images of shape {list(images.shape)}, expected [N, '
          f'{", ".join(map(str, dataset.image_shape))}] (the data set\'s '
          f'image_shape).')
    if transform_name != 'features' and images.dtype != np.uint8:
      raise data_lib.DataError(
          f'{where}: images are {images.dtype}, but config.data.transform='
          f'{transform_name!r} expects uint8 pixels in 0..255. Convert them '
          f'(for values x in [0, 1]: np.round(x * 255).astype(np.uint8)), '
          f'or set config.data.transform="features" for float vectors.')
    if np.issubdtype(images.dtype, np.floating):
      finite = np.isfinite(images.reshape(len(images), -1)).all(axis=1)
      if not finite.all():
        raise data_lib.DataError(
            f'{where}: {int(np.sum(~finite))} of {len(images)} examples '
            f'contain NaN or inf (the first: example {int(np.argmin(finite))}'
            f'). Remove or '
            f'repair them; for a first stage\'s features, check that the '
            f'first stage trained without diverging.')
    if (split.labels is None) != (dataset.num_classes == 0):
      raise data_lib.DataError(
          f'{where}: labels are {"absent" if split.labels is None else "given"}'
          f' but the data set has num_classes={dataset.num_classes}; an '
          f'unlabelled data set has labels=None in every split and '
          f'num_classes=0.')
    if split.labels is None:
      continue
    labels = np.asarray(split.labels)
    if labels.shape != (len(images),):
      raise data_lib.DataError(
          f'{where}: {len(images)} images but labels of shape '
          f'{list(labels.shape)}; pass one label per image.')
    if not np.issubdtype(labels.dtype, np.integer):
      raise data_lib.DataError(
          f'{where}: labels are {labels.dtype}; pass integer class indices.')
    if len(labels) and not (0 <= labels.min() and
                            labels.max() < dataset.num_classes):
      raise data_lib.DataError(
          f'{where}: labels range over [{labels.min()}, {labels.max()}], '
          f'expected classes 0..{dataset.num_classes - 1}; fix the labels '
          f'(or the data set\'s num_classes).')


def build_experiment(config, dataset, first_stage=None,
                     pretrained_params=None):
  """Checks the config and `dataset` and builds every component.

  `dataset` is the data the model trains on, as `vaejax.stages` gives it
  (a first stage's features replacing the images, when there is one, and
  that stage as `first_stage`), `pretrained_params` those of the run named
  by `config.init_from`.
  """
  check_names(config)
  mesh = sharding.make_mesh(config.num_devices)
  sharding.check_batch_divisible(config.batch_size, mesh)
  sharding.check_batch_divisible(config.eval.batch_size, mesh,
                                 'config.eval.batch_size')
  check_dataset(dataset, config.data.transform)
  if len(dataset.train.images) < config.batch_size:
    raise errors.ConfigError(
        f'config.batch_size={config.batch_size} is larger than the training '
        f'set ({len(dataset.train.images)} examples).')
  likelihood = likelihoods.get_likelihood(config.objective)
  family = models.build_family(config, dataset.image_shape, likelihood)
  # A second stage may decode with its first stage (a prior's samples).
  family.first_stage = first_stage
  return Experiment(
      config=config,
      dataset=dataset,
      mesh=mesh,
      family=family,
      model=family.model,
      objective=objectives.get_objective(config),
      likelihood=likelihood,
      transform=transforms.get_transform(config.data.transform),
      optimizer=optim.make_optimizer(config.optimizer,
                                     config.num_train_steps),
      keys=prng.named_keys(config.seed),
      first_stage=first_stage,
      pretrained_params=pretrained_params)


def init_state(exp):
  """Step 0: parameters, non-parameter collections and optimiser state.

  With `config.ema_decay` > 0 the state also keeps `ema_params`, an
  exponential moving average of the parameters (Polyak averaging, as VDVAE
  and NVAE evaluate); with `config.early_stopping_patience` > 0 it keeps
  `early_stopping`: the variables evaluated best on the validation split so
  far, that loss, its step and the evaluations since. Both live in the
  train state, so every checkpoint resumes exactly and holds the best
  variables (`best_state`).
  """
  dummy = jnp.zeros((1, *exp.image_shape), jnp.float32)
  # Compiled, initialisation takes half the time of running it op by op.
  variables = jax.jit(exp.model.init)(exp.keys['init'], dummy)
  # Models fitted without gradients (EM) have no 'params' collection.
  params = variables.pop('params', {})
  if exp.pretrained_params is not None:
    params = initial_params(params, exp.pretrained_params,
                            exp.config.init_from)
  state = {
      'step': jnp.zeros((), jnp.int32),
      'params': params,
      'model_state': dict(variables),
      'opt_state': exp.optimizer.init(params),
  }
  config = exp.config
  if config.ema_decay:
    state['ema_params'] = jax.tree.map(jnp.copy, params)
  if config.early_stopping_patience:
    state['early_stopping'] = {
        'params': jax.tree.map(jnp.copy, params),
        'model_state': jax.tree.map(jnp.copy, dict(variables)),
        'loss': jnp.asarray(np.inf, jnp.float32),
        'step': jnp.zeros((), jnp.int32),
        'evals_since_best': jnp.zeros((), jnp.int32),
    }
  return sharding.put_replicated(state, exp.mesh)


def initial_params(params, pretrained, source):
  """`params` with each top-level subtree that `pretrained` also has (same
  name, structure and shapes) replaced by the pretrained one: a fine-tuned
  classifier starts from a masked autoencoder's `encoder`, its head fresh.

  Raises ConfigError when no subtree matches or a shared name has other
  shapes (a different architecture), naming both.
  """
  def shapes(tree):
    return jax.tree.map(lambda a: tuple(a.shape), tree)

  shared = sorted(set(params) & set(pretrained))
  for name in shared:
    if (jax.tree.structure(params[name]) != jax.tree.structure(
        pretrained[name]) or shapes(params[name]) != shapes(pretrained[name])):
      raise errors.ConfigError(
          f'config.init_from={source}: its parameters {name!r} have other '
          f'shapes than this model\'s (the architectures differ): '
          f'{shapes(pretrained[name])} vs {shapes(params[name])}. Give the '
          f'model the pretrained run\'s sizes (config.model).')
  if not shared:
    raise errors.ConfigError(
        f'config.init_from={source}: none of its parameter groups '
        f'({", ".join(sorted(pretrained))}) is in this model '
        f'({", ".join(sorted(params))}); nothing to initialise from it.')
  logging.info('Initialised %s from %s; trained from scratch: %s.',
               ', '.join(shared), source,
               ', '.join(sorted(set(params) - set(shared))) or 'nothing')
  return dict(params, **{name: jax.tree.map(jnp.asarray, pretrained[name])
                         for name in shared})


def evaluated_params(state):
  """The parameters a state is evaluated with: their moving average when
  the run keeps one, else the parameters."""
  return state['ema_params'] if 'ema_params' in state else state['params']


def stopped_early(state, config):
  """Whether early stopping ended the run of `state`."""
  return ('early_stopping' in state and
          int(state['early_stopping']['evals_since_best'])
          >= config.early_stopping_patience)


def best_state(state):
  """`state` with the variables that evaluated best on the validation split
  (early stopping) as its parameters; `state` itself without early
  stopping. What the final evaluation, the figures and a restored workdir
  use."""
  if 'early_stopping' not in state:
    return state
  best = state['early_stopping']
  if int(best['step']) == 0:  # Never evaluated: nothing was selected.
    return state
  chosen = {k: v for k, v in state.items() if k != 'ema_params'}
  chosen.update(params=best['params'], model_state=best['model_state'])
  return chosen


def early_stopping_update(exp, state, step, loss):
  """Early stopping's record after a validation loss at `step`: the
  evaluated variables become the best when the loss is lower than the best
  so far, else one more evaluation since the best."""
  record = state['early_stopping']
  if loss < float(record['loss']):
    record = {
        'params': _copy(evaluated_params(state)),
        'model_state': _copy(state['model_state']),
        'loss': sharding.put_replicated(np.float32(loss), exp.mesh),
        'step': sharding.put_replicated(np.int32(step), exp.mesh),
        'evals_since_best': sharding.put_replicated(np.int32(0), exp.mesh),
    }
  else:
    record = dict(record, evals_since_best=sharding.put_replicated(
        np.int32(int(record['evals_since_best']) + 1), exp.mesh))
  return dict(state, early_stopping=record)


# New buffers (the train chunk donates the state's, so the best variables
# must not share them), with the same shardings.
_copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))
