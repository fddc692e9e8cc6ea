"""An experiment built from its config: data, mesh, model, objective, keys.

`build_experiment` checks every name in the config and loads the data before
any training work; `train.train_and_evaluate`, `evaluate` and notebooks all
start from it.
"""
import dataclasses
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
from vaejax import evaluate
from vaejax import models
from vaejax import objectives
from vaejax import optim
from vaejax import sharding
from vaejax.data import features
from vaejax.data import transforms
from vaejax.objectives import likelihoods

KEY_STREAMS = ('init', 'data', 'train', 'eval', 'sample')


@dataclasses.dataclass
class Experiment:
  """Everything built from a config before any training work."""
  config: ml_collections.ConfigDict
  dataset: Any
  mesh: jax.sharding.Mesh
  model: nn.Module
  objective: Callable
  likelihood: Any
  transform: transforms.Transform
  optimizer: optax.GradientTransformation
  keys: dict

  @property
  def image_shape(self):
    return self.dataset.image_shape

  @property
  def num_dims(self):
    return math.prod(self.image_shape)


def named_keys(seed):
  """The root key split into the named streams of KEY_STREAMS."""
  keys = jax.random.split(jax.random.key(seed), len(KEY_STREAMS))
  return dict(zip(KEY_STREAMS, keys))


def check_names(config):
  """Fails fast on any unknown component name, before data is loaded."""
  models.MODELS.get(config.model.name)
  objectives.OBJECTIVES.get(config.objective.name)
  likelihoods.LIKELIHOODS.get(config.objective.likelihood)
  transforms.TRANSFORMS.get(config.data.transform)
  optim.OPTIMIZERS.get(config.optimizer.name)
  optim.SCHEDULES.get(config.optimizer.get('schedule', 'constant'))
  for name in config.eval.get('extras', ()):
    evaluate.EVALUATIONS.get(name)
  for name in config.eval.get('figures', ()):
    evaluate.FIGURES.get(name)
  if config.data.name not in data_lib.KNOWN_DATASETS:
    raise data_lib.DataError(
        f'Unknown dataset {config.data.name!r}. Known datasets: '
        f'{", ".join(sorted(data_lib.KNOWN_DATASETS))}. Set config.data.name '
        f'in the experiment file or with --config.data.name=NAME.')
  for name in ('batch_size', 'num_train_steps', 'steps_per_dispatch'):
    if config[name] <= 0:
      raise errors.ConfigError(
          f'config.{name} must be positive, got {config[name]}.')


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
    images, labels = np.asarray(split.images), np.asarray(split.labels)
    where = f'{split_name} split of {dataset.source}'
    if images.shape[1:] != tuple(dataset.image_shape):
      raise data_lib.DataError(
          f'{where}: images of shape {list(images.shape)}, expected [N, '
          f'{", ".join(map(str, dataset.image_shape))}] (the data set\'s '
          f'image_shape).')
    if labels.shape != (len(images),):
      raise data_lib.DataError(
          f'{where}: {len(images)} images but labels of shape '
          f'{list(labels.shape)}; pass one label per image.')
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
    if not np.issubdtype(labels.dtype, np.integer):
      raise data_lib.DataError(
          f'{where}: labels are {labels.dtype}; pass integer class indices.')
    if len(labels) and not (0 <= labels.min() and
                            labels.max() < dataset.num_classes):
      raise data_lib.DataError(
          f'{where}: labels range over [{labels.min()}, {labels.max()}], '
          f'expected classes 0..{dataset.num_classes - 1}; fix the labels '
          f'(or the data set\'s num_classes).')


def build_experiment(config, dataset=None):
  """Checks the config, loads the data and builds every component."""
  check_names(config)
  mesh = sharding.make_mesh(config.get('num_devices'))
  sharding.check_batch_divisible(config.batch_size, mesh)
  sharding.check_batch_divisible(config.eval.batch_size, mesh,
                                 'config.eval.batch_size')
  dataset = dataset or data_lib.load_dataset(config.data)
  dataset = features.extract_features(config, dataset)
  check_dataset(dataset, config.data.transform)
  if len(dataset.train.images) < config.batch_size:
    raise errors.ConfigError(
        f'config.batch_size={config.batch_size} is larger than the training '
        f'set ({len(dataset.train.images)} examples).')
  likelihood = likelihoods.get_likelihood(config.objective)
  return Experiment(
      config=config,
      dataset=dataset,
      mesh=mesh,
      model=models.build_model(config, dataset.image_shape, likelihood),
      objective=objectives.get_objective(config),
      likelihood=likelihood,
      transform=transforms.get_transform(config.data.transform),
      optimizer=optim.make_optimizer(config.optimizer,
                                     config.num_train_steps),
      keys=named_keys(config.seed))


def init_state(exp):
  """Step 0: parameters, non-parameter collections and optimiser state."""
  dummy = jnp.zeros((1, *exp.image_shape), jnp.float32)
  # Compiled, initialisation takes half the time of running it op by op.
  variables = jax.jit(exp.model.init)(exp.keys['init'], dummy)
  # Models fitted without gradients (EM) have no 'params' collection.
  params = variables.pop('params', {})
  state = {
      'step': jnp.zeros((), jnp.int32),
      'params': params,
      'model_state': dict(variables),
      'opt_state': exp.optimizer.init(params),
  }
  return sharding.put_replicated(state, exp.mesh)
