"""The one evaluation path: a trained state on a held-out split.

`Evaluator(exp, evaluations, figures)` (built by `evaluators.build`) maps
per-example functions over the split under `jax.shard_map` (examples split
over the `data` axis), computes the objective's own metrics, then the
evaluations of `config.eval.extras` and the figures of
`config.eval.figures`. Each is asked of the experiment's family
(`vaejax.models.family`): one whose abilities the family lacks, or that
needs labels the data set does not have, is skipped with a one-line reason
in the log when the evaluator is built, never by an error at the end of a
run.

Keys come from the fixed `eval` stream and the example's index in the split,
so the test set is binarised once, the same way every time, and repeated
evaluation of one checkpoint gives identical numbers.
"""
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from vaejax import errors
from vaejax import experiment
from vaejax import images as image_lib
from vaejax import metric_writers
from vaejax import prng
from vaejax import sharding
from vaejax import workdir as workdir_lib
from vaejax.data import transforms
from vaejax.evaluators import spec


def map_examples(mesh, fn):
  """jit(shard_map(fn)) for fn(replicated, images [B], positions [B]) -> tree of [B, ...].

  The returned function takes host arrays for images and positions (the
  global batch, the same on every process).
  """
  compiled = jax.jit(jax.shard_map(
      fn, mesh=mesh,
      in_specs=(P(), P(sharding.DATA_AXIS), P(sharding.DATA_AXIS)),
      out_specs=P(sharding.DATA_AXIS)))

  def call(replicated, images, positions):
    images, positions = sharding.put_global(
        (images, positions), mesh, P(sharding.DATA_AXIS))
    return compiled(replicated, images, positions)

  return call


PROGRESS_EVERY_S = 15.0


def run_over_split(compiled_fn, replicated, images, batch_size, label=None):
  """Applies a `map_examples` function to all images in batches (padding the
  last one) and returns the per-example outputs concatenated on the host.

  With a `label`, a pass that takes long logs its progress and an ETA every
  PROGRESS_EVERY_S seconds.
  """
  outputs = []
  num = len(images)
  started = last_report = time.monotonic()
  for start in range(0, num, batch_size):
    now = time.monotonic()
    if label and start and now - last_report > PROGRESS_EVERY_S:
      eta = (now - started) / start * (num - start)
      logging.info('%s: %d/%d examples, ETA %s', label, start, num,
                   metric_writers.format_duration(eta))
      last_report = now
    chunk = images[start:start + batch_size]
    valid = len(chunk)
    if valid < batch_size:
      pad = np.zeros((batch_size - valid, *chunk.shape[1:]), chunk.dtype)
      chunk = np.concatenate([chunk, pad])
    positions = np.arange(start, start + batch_size, dtype=np.int32)
    out = sharding.to_host(compiled_fn(replicated, chunk, positions))
    outputs.append(jax.tree.map(lambda x: x[:valid], out))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)


def describe_settings(settings):
  """' (k=v, ...)' of an evaluation's settings, or ''."""
  if not settings:
    return ''
  return ' (' + ', '.join(f'{k}={v}' for k, v in settings.items()) + ')'


def variables_of(state):
  """The flax variables a train state is evaluated with: its parameters
  (their moving average when the run keeps one) and model state. For the
  best variables of an early-stopped run pass `experiment.best_state(state)`."""
  return {'params': experiment.evaluated_params(state), **state['model_state']}


class Evaluator:
  """Evaluates train states of an experiment on its held-out split."""

  def __init__(self, exp, evaluations, figures, trained_features=None):
    self.exp = exp
    # workdir -> the `represent` of the run trained there, on uint8 images
    # (`vaejax.stages.trained_features`, passed in by the callers above
    # this layer); None where the caller passes none.
    self.trained_features = trained_features
    # Results that several evaluations share (a feature extractor and its
    # features of the held-out split), computed once.
    self.cache = {}
    self.family = exp.family
    config = exp.config
    self.eval_config = config.eval
    self.split_name = config.eval.split
    if self.split_name == 'validation':
      if exp.dataset.validation is None:
        raise errors.ConfigError(
            'config.eval.split="validation" needs a validation split, held '
            'out of the training set when the model is trained, and this '
            'run has none (config.data.validation_size=0). Train a new run '
            'with --config.data.validation_size=N (N > 0) to evaluate on '
            'one.')
      self.split = exp.dataset.validation
    else:
      self.split = exp.dataset.test
    # Periodic evaluations during training (and early stopping) watch the
    # validation split when the run holds one out.
    if exp.dataset.validation is not None:
      self.quick_split_name, self.quick_split = (
          'validation', exp.dataset.validation)
    else:
      self.quick_split_name, self.quick_split = self.split_name, self.split
    self._compiled = {}
    # The evaluation being run, named in progress lines.
    self._running = None
    self.evaluations = self._runnable('evaluation', evaluations,
                                      config.eval.extras)
    self.figure_makers = self._runnable('figure', figures,
                                        config.eval.figures)
    model, objective = exp.model, exp.objective

    def objective_metrics(replicated, images, positions):
      variables, labels = replicated
      x, objective_keys = self.inputs(images, positions)
      batch = {'image': images, 'inputs': x}
      # As in training, a labelled split's batches carry the labels (the
      # padding of a last batch repeats the last label; it is dropped).
      if labels is not None:
        batch['label'] = labels[jnp.minimum(positions, len(labels) - 1)]
      loss, metrics, _ = objective(model, variables, batch, objective_keys,
                                   jnp.asarray(config.num_train_steps), False)
      metrics = dict(metrics, loss=loss)
      return {k: jnp.broadcast_to(v, loss.shape) for k, v in metrics.items()}

    self._objective_metrics = objective_metrics
    # Seeds host-side fits (k-means, EM). Split off the eval stream, so it is
    # none of the per-example keys fold_in(eval, position).
    self.analysis_key = jax.random.split(exp.keys['eval'])[0]

  def _runnable(self, kind, registry, names):
    """[(name, Evaluation, settings)] of `names` that can run on this
    experiment; the others are logged with the reason, once."""
    runnable = []
    for name in names:
      entry = registry.get(name)
      settings = spec.read_settings(self.exp.config, entry.settings)
      reason = self.family.missing(entry.requires)
      if reason is None and entry.needs_labels and not self.has_labels:
        reason = f'{self.exp.dataset.source} has no class labels'
      if reason is None and entry.unavailable is not None:
        reason = entry.unavailable(self, settings)
      if reason is not None:
        logging.info('Skipping the %s %r: %s.', kind, name, reason)
        continue
      runnable.append((name, entry, settings))
    return runnable

  @property
  def has_labels(self):
    return self.exp.dataset.num_classes > 0

  def inputs(self, images, positions):
    """Model inputs and objective keys of held-out examples (fixed keys)."""
    data_keys, objective_keys = prng.data_and_objective_keys(
        self.exp.keys['eval'], positions)
    return self.exp.transform.apply(data_keys, images), objective_keys

  def map_split(self, fn, variables, images, batch_size=None):
    """Runs fn(variables, images [B], positions [B]) -> tree of [B, ...] over
    `images`, sharded over devices; returns host arrays for all examples."""
    if fn not in self._compiled:
      self._compiled[fn] = map_examples(self.exp.mesh, fn)
    return run_over_split(self._compiled[fn], variables, images,
                          batch_size or self.eval_config.batch_size,
                          label=self._running)

  def map_local(self, fn, variables, images, batch_size=None):
    """`map_split` on this process's default device only.

    For figures: only process 0 draws them, and a sharded call there would
    wait forever for the other processes.
    """
    key = ('local', fn)
    if key not in self._compiled:
      self._compiled[key] = jax.jit(fn)
    return run_over_split(self._compiled[key], variables, images,
                          batch_size or self.eval_config.batch_size)

  def representations(self, variables, images, on_all_devices=True):
    """`family.represent` of the fixed-key inputs of `images`, [N, D].

    Figures pass on_all_devices=False (see `map_local`).
    """
    run = self.map_split if on_all_devices else self.map_local
    return run(self._represent, variables, images)

  def _represent(self, variables, images, positions):
    x, _ = self.inputs(images, positions)
    return self.family.represent(variables, x)

  def eval_labels(self, images):
    """The labels of `images` from `eval_images` (a prefix of the split)."""
    return self.split.labels[:len(images)]

  def split_labels(self, quick, num):
    """int32 labels of the first `num` examples of the quick or evaluation
    split (`eval_images`), or None for an unlabelled data set."""
    split = self.quick_split if quick else self.split
    if split.labels is None:
      return None
    return np.asarray(split.labels[:num], np.int32)

  def pixel_dataset(self):
    """The data set of images behind this experiment: its own, or, for a
    second stage trained on a first stage's outputs (a PixelCNN prior on a
    VQ-VAE's code grids), the first stage's."""
    first = self.exp.first_stage
    trained = getattr(first, 'trained', None)
    return self.exp.dataset if trained is None else trained.exp.dataset

  def pixel_images(self, images):
    """The images behind `images` (a prefix of the evaluation split): the
    same examples of `pixel_dataset()`."""
    dataset = self.pixel_dataset()
    if dataset is self.exp.dataset:
      return images
    return getattr(dataset, self.split_name).images[:len(images)]

  def eval_images(self, quick=False):
    """The held-out images: the first `quick_examples` of the quick split
    (validation when the run has one) if quick, else the first
    `max_examples` of the evaluation split if set, else all of it."""
    if quick:
      return self.quick_split.images[:self.eval_config.quick_examples]
    images = self.split.images
    if self.eval_config.max_examples:
      return images[:self.eval_config.max_examples]
    return images

  def evaluate(self, state, step, quick=False):
    """Mean metrics over the held-out split; extras only when not quick.

    Adds `nll_elbo` (= -ELBO, nats/example) and bits/dim where the objective
    reports an ELBO.
    """
    del step
    images = self.eval_images(quick)
    variables = variables_of(state)
    labels = self.split_labels(quick, len(images))
    if labels is not None:
      labels = sharding.put_replicated(labels, self.exp.mesh)
    per_example = self.map_split(self._objective_metrics, (variables, labels),
                                 images)
    metrics = {k: float(np.mean(v)) for k, v in per_example.items()}
    if 'elbo' in metrics:
      metrics['nll_elbo'] = -metrics['elbo']
      metrics.update(self.bits_per_dim('elbo', metrics['nll_elbo']))
    if not quick:
      for name, entry, settings in self.evaluations:
        logging.info('Evaluation %r on %d %s examples%s ...', name,
                     len(images), self.split_name, describe_settings(settings))
        self._running = f'evaluation {name!r}'
        started = time.monotonic()
        try:
          metrics.update(entry.fn(self, variables, images, settings))
        finally:
          self._running = None
        logging.info('Evaluation %r took %s.', name,
                     metric_writers.format_duration(time.monotonic() - started))
    metrics['eval_examples'] = len(images)
    return metrics

  def bits_per_dim(self, name, nats_per_example):
    """{'bits_per_dim_<name>': ...} where -log p is a code length."""
    if not (self.exp.likelihood.discrete or self.exp.transform.nats_per_dim):
      return {}
    return {f'bits_per_dim_{name}': transforms.bits_per_dim(
        nats_per_example, self.exp.num_dims, self.exp.transform)}

  def figures(self, state):
    """{name: `vaejax.images.Picture`} of `config.eval.figures`."""
    variables = variables_of(state)
    pictures = {}
    for _, entry, settings in self.figure_makers:
      pictures.update(entry.fn(self, variables, settings))
    return pictures

  def save_figures(self, workdir, state, step, writer):
    """Draws the figures of a host copy of `state` as W/images/<name>_step<S>
    .png and TensorBoard images; returns {name: PNG path}."""
    paths = {}
    for name, picture in self.figures(state).items():
      paths[name] = workdir_lib.image_path(workdir, name, step)
      pixels = image_lib.save_picture(paths[name], picture)
      writer.write_image(step, f'images/{name}', pixels)
    return paths
