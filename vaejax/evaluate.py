"""Evaluation of a trained model: likelihoods, diagnostics, probes, pictures.

  python -m vaejax.evaluate --workdir W [--k 5000] [--split test|validation]
      [--extras iwae,diagnostics,linear_probe,clustering]

loads W/config.json and the latest checkpoint in W/checkpoints, evaluates it
on the held-out split and writes W/eval/evaluation_step<S>_<split>[_k<k>].json
(never overwritten by another step, split or k), a copy of it as
W/eval/evaluation.json (the latest run of this command; the train loop's own
final numbers stay in W/eval/metrics.json), PNGs in W/images/, and the same
scalars and images to TensorBoard under W/tensorboard/evaluate.

What is measured is chosen by name: `config.eval.extras` (EVALUATIONS: the
IWAE log-likelihood, latent diagnostics, linear probe, clustering) and
`config.eval.figures` (FIGURES: reconstructions, samples, interpolations,
the 2-D manifold, latent traversals, a PCA scatter of the codes).

Every evaluation maps a per-example function over a split under
`jax.shard_map` (examples split over the `data` axis). Keys come from the
fixed `eval` stream and the example's index in the split, so the test set is
binarised once, the same way every time, and repeated evaluation of one
checkpoint gives identical numbers.
"""
import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app
from absl import flags
from jax import lax
from jax.sharding import PartitionSpec as P
from jax.scipy.special import ndtri

from vaejax import autoencoder_evaluation
from vaejax import checkpoint
from vaejax import data as data_lib
from vaejax import cli
from vaejax import errors
from vaejax import experiment
from vaejax import images as image_lib
from vaejax import latent_figures
from vaejax import metric_writers
from vaejax import mixture_evaluation
from vaejax import probes
from vaejax import registry
from vaejax import sharding
from vaejax.data import transforms
from vaejax.objectives import distributions
from vaejax.objectives import vae as vae_objectives


def per_example_keys(key, positions):
  """The (data, objective) keys of examples at `positions` (as in training)."""
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, positions)
  split = jax.vmap(lambda k: jax.random.split(k, 2))(keys)
  return split[:, 0], split[:, 1]


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


def run_over_split(compiled_fn, replicated, images, batch_size):
  """Applies a `map_examples` function to all images in batches (padding the
  last one) and returns the per-example outputs concatenated on the host."""
  outputs = []
  num = len(images)
  for start in range(0, num, batch_size):
    chunk = images[start:start + batch_size]
    valid = len(chunk)
    if valid < batch_size:
      pad = np.zeros((batch_size - valid, *chunk.shape[1:]), chunk.dtype)
      chunk = np.concatenate([chunk, pad])
    positions = np.arange(start, start + batch_size, dtype=np.int32)
    out = sharding.to_host(compiled_fn(replicated, chunk, positions))
    outputs.append(jax.tree.map(lambda x: x[:valid], out))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)


def iwae_log_likelihood(model, variables, likelihood, x, keys, num_samples,
                        chunk_size):
  """log p(x) estimated by L_k with k = num_samples, in chunks of samples.

  Chunk c uses keys fold_in(key, c); the chunks' logsumexps are combined
  exactly, so the result equals the one-shot L_k on the same samples.
  """
  if num_samples % chunk_size:
    raise ValueError(
        f'config.eval.iwae_samples={num_samples} must be a multiple of '
        f'config.eval.iwae_chunk={chunk_size}.')

  def add_chunk(running, c):
    chunk_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, c)
    log_weights = vae_objectives.log_importance_weights(
        model, variables, likelihood, x, chunk_keys, chunk_size)
    return jnp.logaddexp(running, jax.nn.logsumexp(log_weights, -1)), None

  # Derived from x so that, under shard_map, the carry varies over devices
  # like the per-example values added to it.
  initial = jnp.full_like(x[:, 0, 0, 0], -jnp.inf)
  total, _ = lax.scan(add_chunk, initial, jnp.arange(num_samples // chunk_size))
  return total - math.log(num_samples)


def write_metrics_json(workdir, step, metrics, name='metrics.json'):
  """Writes eval metrics to workdir/eval/<name> atomically."""
  path = os.path.join(workdir, 'eval', name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  record = {'step': int(step),
            **{k: float(v) for k, v in sorted(metrics.items())}}
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f, indent=2)
  os.replace(path + '.tmp', path)
  return path


class Evaluator:
  """Evaluates a train state of an experiment on its held-out split.

  What is measured beyond the objective's own metrics is chosen by name in
  `config.eval.extras` (EVALUATIONS) and `config.eval.figures` (FIGURES), so
  a model family adds its evaluations without a second evaluation path.
  """

  def __init__(self, exp):
    self.exp = exp
    config = exp.config
    self.eval_config = config.eval
    use_validation = config.eval.get('split', 'test') == 'validation'
    if use_validation and exp.dataset.validation is None:
      raise errors.ConfigError(
          'config.eval.split="validation" needs config.data.validation_size '
          '> 0.')
    self.split = (exp.dataset.validation if use_validation
                  else exp.dataset.test)
    self._compiled = {}
    model, objective = exp.model, exp.objective

    def objective_metrics(variables, images, positions):
      x, objective_keys = self.inputs(images, positions)
      batch = {'image': images, 'inputs': x}
      loss, metrics, _ = objective(model, variables, batch, objective_keys,
                                   jnp.asarray(config.num_train_steps), False)
      metrics = dict(metrics, loss=loss)
      return {k: jnp.broadcast_to(v, loss.shape) for k, v in metrics.items()}

    self._objective_metrics = objective_metrics

    def encodings(variables, images, positions):
      x, _ = self.inputs(images, positions)
      return code_statistics(*code_and_logvar(model, variables, x))

    self._encodings = encodings
    # Seeds host-side fits (k-means, EM). Split off the eval stream, so it is
    # none of the per-example keys fold_in(eval, position).
    self.analysis_key = jax.random.split(exp.keys['eval'])[0]

  def inputs(self, images, positions):
    """Model inputs and objective keys of held-out examples (fixed keys)."""
    data_keys, objective_keys = per_example_keys(self.exp.keys['eval'],
                                                 positions)
    return self.exp.transform.apply(data_keys, images), objective_keys

  def map_split(self, fn, variables, images, batch_size=None):
    """Runs fn(variables, images [B], positions [B]) -> tree of [B, ...] over
    `images`, sharded over devices; returns host arrays for all examples."""
    if fn not in self._compiled:
      self._compiled[fn] = map_examples(self.exp.mesh, fn)
    return run_over_split(self._compiled[fn], variables, images,
                          batch_size or self.eval_config.batch_size)

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

  def encodings(self, variables, images, on_all_devices=True):
    """Codes of the fixed-key inputs of `images`.

    Returns {'code': [N, D]} (posterior means, or an autoencoder's codes,
    flattened) and, for a Gaussian encoder, 'kl_per_dim' [N, D]. Figures pass
    on_all_devices=False (see `map_local`).
    """
    run = self.map_split if on_all_devices else self.map_local
    return run(self._encodings, variables, images)

  def eval_labels(self, images):
    """The labels of `images` from `eval_images` (a prefix of the split)."""
    return self.split.labels[:len(images)]

  def eval_images(self, quick=False):
    """The held-out images: the first `quick_examples` if quick, else the
    first `max_examples` if set, else all."""
    images = self.split.images
    if quick:
      return images[:self.eval_config.get('quick_examples', 2000)]
    if self.eval_config.get('max_examples'):
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
    per_example = self.map_split(self._objective_metrics, variables, images)
    metrics = {k: float(np.mean(v)) for k, v in per_example.items()}
    if 'elbo' in metrics:
      metrics['nll_elbo'] = -metrics['elbo']
      metrics.update(self.bits_per_dim('elbo', metrics['nll_elbo']))
    if not quick:
      for name in self.eval_config.get('extras', ()):
        metrics.update(EVALUATIONS.get(name)(self, variables, images))
    metrics['eval_examples'] = len(images)
    return metrics

  def bits_per_dim(self, name, nats_per_example):
    """{'bits_per_dim_<name>': ...} where -log p is a code length."""
    if not (self.exp.likelihood.discrete or self.exp.transform.nats_per_dim):
      return {}
    return {f'bits_per_dim_{name}': transforms.bits_per_dim(
        nats_per_example, self.exp.num_dims, self.exp.transform)}

  def figures(self, state):
    """Image grids in [0, 1] named by `config.eval.figures`."""
    variables = variables_of(state)
    grids = {}
    for name in self.eval_config.get('figures', ()):
      grids.update(FIGURES.get(name)(self, variables))
    return grids

  def save_figure(self, workdir, name, grid, step):
    path = os.path.join(workdir, 'images', f'{name}_step{int(step):07d}.png')
    image_lib.save_png(path, grid)
    return path


def variables_of(state):
  return {'params': state['params'], **state['model_state']}


def iwae_metrics(evaluator, variables, images):
  """IWAE estimate of -log p(x) with k = eval.iwae_samples (VAEs)."""
  eval_config = evaluator.eval_config
  exp = evaluator.exp

  def iwae(variables, images, positions):
    x, objective_keys = evaluator.inputs(images, positions)
    return iwae_log_likelihood(
        exp.model, variables, exp.likelihood, x, objective_keys,
        eval_config.iwae_samples, eval_config.iwae_chunk)

  log_px = evaluator.map_split(iwae, variables, images,
                               eval_config.get('iwae_batch_size'))
  nll = float(-np.mean(log_px))
  return {'nll_iwae': nll, 'iwae_samples': eval_config.iwae_samples,
          **evaluator.bits_per_dim('iwae', nll)}


ACTIVE_UNIT_THRESHOLD = 0.01


def active_units(means, threshold=ACTIVE_UNIT_THRESHOLD):
  """Number of latent dimensions u with Cov_x(E_q[z_u | x]) > threshold.

  A dimension whose posterior mean hardly moves with x carries no
  information about x: it has collapsed to the prior (Burda et al., 2016).
  `means` is [N, D]; the variance is over the N examples.
  """
  variances = np.var(np.asarray(means, np.float64), axis=0)
  return int(np.sum(variances > threshold))


def diagnostics_metrics(evaluator, variables, images):
  """Latent diagnostics and reconstruction error on the held-out examples.

  * `kl_dim_<j>`: mean over examples of KL(q(z_j | x) || N(0, 1)); they sum
    to the objective's `kl` (Gaussian encoders only).
  * `active_units` of `latent_dims` (see `active_units`).
  * `reconstruction_mse`: per-pixel squared error between the inputs and the
    likelihood's mean at the posterior mean code; `reconstruction_nll_at_mean`:
    -log p(x | z = E_q[z | x]) in nats per example.
  """
  model, likelihood = evaluator.exp.model, evaluator.exp.likelihood

  def codes_and_errors(variables, images, positions):
    x, _ = evaluator.inputs(images, positions)
    code, logvar = code_and_logvar(model, variables, x)
    decoded = model.apply(variables, code, method=model.decode)
    squared_error = jnp.square(likelihood.mean(decoded) - x)
    return {'squared_error': jnp.mean(
                squared_error.reshape(x.shape[0], -1), axis=-1),
            'nll_at_mean': -likelihood.log_prob(decoded, x),
            **code_statistics(code, logvar)}

  per_example = evaluator.map_split(codes_and_errors, variables, images)
  latent_dims = per_example['code'].shape[1]
  metrics = {
      'reconstruction_mse': float(np.mean(per_example['squared_error'])),
      'reconstruction_nll_at_mean': float(np.mean(per_example['nll_at_mean'])),
      'active_units': active_units(per_example['code']),
      'latent_dims': latent_dims,
  }
  if 'kl_per_dim' in per_example:
    width = len(str(latent_dims - 1))
    metrics.update({
        f'kl_dim_{j:0{width}d}': float(kl)
        for j, kl in enumerate(np.mean(per_example['kl_per_dim'], axis=0))})
  return metrics


def pixel_features(images):
  """uint8 images [N, H, W, C] -> intensities in [0, 1], flattened [N, HWC]:
  the raw-pixel baseline the codes are compared with."""
  return np.asarray(images, np.float32).reshape(len(images), -1) / 255.0


def linear_probe_metrics(evaluator, variables, images):
  """Linear-probe accuracy on frozen codes, and on raw pixels for comparison.

  A logistic regression (`probes.fit_linear_probe`) is fitted on the first
  `eval.probe_train_examples` training examples and scored on `images`.
  Training images go through the same fixed-key transform as held-out ones
  (binarised once, the same way every time), so the probe is deterministic.
  """
  train = evaluator.exp.dataset.train
  num_train = evaluator.eval_config.get('probe_train_examples', 10000)
  train_images = train.images[:num_train]
  train_labels = train.labels[:num_train]
  test_labels = evaluator.eval_labels(images)
  num_classes = evaluator.exp.dataset.num_classes
  latent_accuracy = probes.linear_probe_accuracy(
      evaluator.encodings(variables, train_images)['code'], train_labels,
      evaluator.encodings(variables, images)['code'], test_labels,
      num_classes)
  pixel_accuracy = probes.linear_probe_accuracy(
      pixel_features(train_images), train_labels, pixel_features(images),
      test_labels, num_classes)
  return {'probe_accuracy_latent': latent_accuracy,
          'probe_accuracy_pixels': pixel_accuracy,
          'probe_train_examples': len(train_images)}


def clustering_metrics(evaluator, variables, images):
  """Clustering accuracy of k-means and a diagonal GMM (EM), one cluster per
  class, on the held-out codes and on the top `eval.pixel_pca_dims` principal
  components of their pixels (PCA keeps EM on pixels fast and well
  conditioned; constant border pixels would make diagonal variances
  degenerate)."""
  labels = evaluator.eval_labels(images)
  num_classes = evaluator.exp.dataset.num_classes
  key = evaluator.analysis_key
  latent = probes.clustering_accuracies(
      key, evaluator.encodings(variables, images)['code'], labels,
      num_classes)
  pixel_pca = probes.pca_project(
      pixel_features(images), evaluator.eval_config.get('pixel_pca_dims', 50))
  pixels = probes.clustering_accuracies(key, pixel_pca, labels, num_classes)
  return {'kmeans_accuracy_latent': latent['kmeans'],
          'gmm_accuracy_latent': latent['gmm'],
          'kmeans_accuracy_pixel_pca': pixels['kmeans'],
          'gmm_accuracy_pixel_pca': pixels['gmm'],
          'pixel_pca_dims': pixel_pca.shape[1]}


EVALUATIONS = registry.Registry('evaluation', {
    'iwae': iwae_metrics,
    'diagnostics': diagnostics_metrics,
    'linear_probe': linear_probe_metrics,
    'clustering': clustering_metrics,
    'denoising': autoencoder_evaluation.denoising_metrics,
    'mixture_cluster_accuracy': mixture_evaluation.cluster_accuracy_metrics,
    'mixture_classifier_accuracy':
        mixture_evaluation.mixture_classifier_metrics,
}, 'config.eval.extras')


def _figure_inputs(evaluator, num_examples=32):
  positions = jnp.arange(num_examples)
  images = jnp.asarray(evaluator.split.images[:num_examples])
  return evaluator.inputs(images, positions)[0]


def code_and_logvar(model, variables, x):
  """(posterior mean, log-variance) of a Gaussian encoder, or (code, None)
  for an encoder that returns a code alone (deterministic autoencoders)."""
  encoded = model.apply(variables, x, method=model.encode)
  if isinstance(encoded, tuple):
    return encoded[0], encoded[1]
  return encoded, None


def code_statistics(code, logvar):
  """{'code': [B, D]}, the code flattened, and for a Gaussian encoder
  'kl_per_dim' [B, D], each dimension's KL(q(z_j | x) || N(0, 1))."""
  batch = code.shape[0]
  statistics = {'code': code.reshape(batch, -1)}
  if logvar is not None:
    statistics['kl_per_dim'] = distributions.gaussian_kl(
        code, logvar).reshape(batch, -1)
  return statistics


def _encode_mean(evaluator, variables, x):
  """The code of x: the posterior mean for a VAE, the code for an AE."""
  return code_and_logvar(evaluator.exp.model, variables, x)[0]


def _decode_mean(evaluator, variables, z):
  model, likelihood = evaluator.exp.model, evaluator.exp.likelihood
  return likelihood.mean(model.apply(variables, z, method=model.decode))


def reconstructions_figure(evaluator, variables):
  """Rows of 8 held-out inputs, each row above its reconstructions."""
  x = _figure_inputs(evaluator)
  recon = _decode_mean(evaluator, variables,
                       _encode_mean(evaluator, variables, x))
  pairs = jnp.stack([x.reshape(-1, 8, *x.shape[1:]),
                     recon.reshape(-1, 8, *x.shape[1:])], axis=1)
  return {'reconstructions': image_lib.make_grid(
      pairs.reshape(-1, *x.shape[1:]), num_columns=8)}


def samples_figure(evaluator, variables):
  """64 decoded draws z ~ N(0, I) from the prior (fixed `sample` key)."""
  latent_dim = _encode_mean(evaluator, variables,
                            _figure_inputs(evaluator, 1)).shape[-1]
  z = jax.random.normal(evaluator.exp.keys['sample'], (64, latent_dim))
  return {'samples': image_lib.make_grid(
      _decode_mean(evaluator, variables, z), num_columns=8)}


def interpolations_figure(evaluator, variables):
  """8 rows: decoded straight lines between the codes of two test images."""
  codes = _encode_mean(evaluator, variables, _figure_inputs(evaluator, 16))
  steps = jnp.linspace(0.0, 1.0, 10)[None, :, None]
  path = (1.0 - steps) * codes[0::2, None] + steps * codes[1::2, None]
  return {'interpolations': image_lib.make_grid(
      _decode_mean(evaluator, variables, path.reshape(-1, codes.shape[-1])),
      num_columns=10)}


def manifold_figure(evaluator, variables):
  """For a 2-D latent: decoded grid over the prior's 5%..95% quantiles."""
  codes = _encode_mean(evaluator, variables, _figure_inputs(evaluator, 1))
  if codes.shape[-1] != 2:
    return {}
  quantiles = ndtri(jnp.linspace(0.05, 0.95, 20))
  grid_z = jnp.stack(jnp.meshgrid(quantiles, quantiles[::-1]), -1)
  return {'manifold': image_lib.make_grid(
      _decode_mean(evaluator, variables, grid_z.reshape(-1, 2)),
      num_columns=20, padding=0)}


TRAVERSAL_STEPS = 11
TRAVERSAL_RANGE = 3.0


def _figure_encodings(evaluator, variables):
  """Encodings of the first `eval.scatter_examples` held-out examples."""
  num_examples = evaluator.eval_config.get('scatter_examples', 2000)
  images = evaluator.split.images[:num_examples]
  encodings = evaluator.encodings(variables, images, on_all_devices=False)
  return encodings, evaluator.split.labels[:num_examples]


def traversals_figure(evaluator, variables):
  """One row per latent dimension among the `eval.traversal_dims` most used.

  Dimensions are ranked by mean KL over the held-out examples (by the
  variance of the code for autoencoders). Each row starts from the code of
  the first held-out image and sets its dimension to TRAVERSAL_STEPS values
  from -3 to +3 standard deviations of that dimension's codes around their
  mean (for an active VAE unit, roughly the prior's range).
  """
  encodings, _ = _figure_encodings(evaluator, variables)
  codes = encodings['code']
  usage = (np.mean(encodings['kl_per_dim'], axis=0)
           if 'kl_per_dim' in encodings else np.var(codes, axis=0))
  num_dims = min(evaluator.eval_config.get('traversal_dims', 8),
                 codes.shape[1])
  dims = np.argsort(-usage, kind='stable')[:num_dims]
  offsets = np.linspace(-TRAVERSAL_RANGE, TRAVERSAL_RANGE, TRAVERSAL_STEPS)
  values = (np.mean(codes, axis=0)[dims, None]
            + np.std(codes, axis=0)[dims, None] * offsets)
  traversal = latent_figures.traversal_codes(codes[0], dims, values)
  return {'traversals': image_lib.make_grid(
      _decode_mean(evaluator, variables, jnp.asarray(traversal)),
      num_columns=TRAVERSAL_STEPS)}


def pca_scatter_figure(evaluator, variables):
  """The held-out codes on their first two principal components, coloured by
  label (the first `eval.scatter_examples` examples)."""
  encodings, labels = _figure_encodings(evaluator, variables)
  points = probes.pca_project(encodings['code'], 2)
  # A 1-D code has one component: draw it along the first axis.
  points = np.pad(points, ((0, 0), (0, 2 - points.shape[1])))
  split = evaluator.eval_config.get('split', 'test')
  return {'pca_scatter': latent_figures.scatter_plot(
      points, labels, evaluator.exp.dataset.class_names,
      title=f'PCA of {split} codes')}


FIGURES = registry.Registry('figure', {
    'reconstructions': reconstructions_figure,
    'samples': samples_figure,
    'interpolations': interpolations_figure,
    'manifold': manifold_figure,
    'traversals': traversals_figure,
    'pca_scatter': pca_scatter_figure,
    'denoising': autoencoder_evaluation.denoising_figure,
}, 'config.eval.figures')


# The evaluation command: the latest checkpoint of a workdir, with its config.


def _lists_to_tuples(value):
  """JSON arrays back to the tuples experiment files write."""
  if isinstance(value, dict):
    return {k: _lists_to_tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_lists_to_tuples(v) for v in value)
  return value


def load_workdir_config(workdir):
  """The experiment config saved in `workdir/config.json` as a ConfigDict."""
  if not os.path.isdir(workdir):
    raise errors.UserError(
        f'workdir {workdir} does not exist. Pass the --workdir of a training '
        f'run (python -m vaejax.main --config ... --workdir {workdir}).')
  saved = checkpoint.load_config_dict(workdir)
  if saved is None:
    raise errors.UserError(
        f'{workdir} has no config.json, so no training run has started '
        f'there. Train first: python -m vaejax.main --config '
        f'experiments/vae.py --workdir {workdir}')
  return ml_collections.ConfigDict(_lists_to_tuples(saved))


def open_latest_checkpoint(workdir, config):
  """A checkpoint manager for `workdir` that has a checkpoint to restore.

  Checks before creating the manager, which would otherwise create an empty
  checkpoint directory.
  """
  directory = checkpoint.checkpoint_dir(workdir)
  manager = None
  if os.path.isdir(directory):
    manager = checkpoint.create_manager(
        workdir, config.get('checkpoints_to_keep', 3))
  if manager is None or manager.latest_step() is None:
    raise errors.UserError(
        f'{workdir} has no checkpoint to evaluate (nothing in {directory}). '
        f'Train until the first checkpoint (config.checkpoint_every steps, '
        f'or the end of training): python -m vaejax.main --config '
        f'experiments/vae.py --workdir {workdir}')
  return manager


def _override_eval_config(config, iwae_samples, split, extras):
  """Applies the command's choices to the loaded `config.eval`."""
  eval_config = config.eval
  if split is not None:
    eval_config.split = split
  if extras is not None:
    eval_config.extras = tuple(extras)
  if iwae_samples is not None:
    eval_config.iwae_samples = iwae_samples
    # k samples are drawn in chunks of iwae_chunk; a smaller k is one chunk.
    eval_config.iwae_chunk = min(eval_config.iwae_chunk, iwae_samples)
    if iwae_samples % eval_config.iwae_chunk:
      raise errors.ConfigError(
          f'--k={iwae_samples} must be a multiple of config.eval.iwae_chunk='
          f'{eval_config.iwae_chunk} (samples are drawn in chunks of that '
          f'size). Choose a multiple, or a k of at most '
          f'{eval_config.iwae_chunk}.')


def evaluate_checkpoint(workdir, iwae_samples=None, split=None, extras=None):
  """Evaluates the latest checkpoint in `workdir` with its saved config.

  Args:
    workdir: the --workdir of a training run.
    iwae_samples: k of the IWAE estimate; default `config.eval.iwae_samples`.
    split: 'test' or 'validation'; default `config.eval.split`.
    extras: names in EVALUATIONS; default `config.eval.extras`.

  Returns:
    {'step', 'metrics', 'metrics_path', 'figure_paths' {name: PNG path}}.
  """
  config = load_workdir_config(workdir)
  _override_eval_config(config, iwae_samples, split, extras)
  manager = open_latest_checkpoint(workdir, config)
  exp = experiment.build_experiment(config)
  evaluator = Evaluator(exp)
  state = checkpoint.restore_readable(manager, experiment.init_state(exp),
                                     workdir, config)
  manager.close()
  step = int(state['step'])
  metrics = evaluator.evaluate(state, step)

  eval_config = config.eval
  split = eval_config.get('split', 'test')
  name = f'evaluation_step{step}_{split}'
  if 'iwae' in eval_config.get('extras', ()):
    name += f'_k{eval_config.iwae_samples}'
  metrics_path = write_metrics_json(workdir, step, metrics, f'{name}.json')
  write_metrics_json(workdir, step, metrics, 'evaluation.json')
  writer = metric_writers.MetricWriter(
      os.path.join(workdir, 'tensorboard', 'evaluate'))
  writer.write_scalars(step, {f'{split}/{k}': v for k, v in metrics.items()})
  figure_paths = {}
  for figure_name, grid in evaluator.figures(jax.device_get(state)).items():
    figure_paths[figure_name] = evaluator.save_figure(workdir, figure_name,
                                                      grid, step)
    writer.write_image(step, f'images/{figure_name}', grid)
  writer.close()
  return {'step': step, 'metrics': metrics, 'metrics_path': metrics_path,
          'figure_paths': figure_paths}


def format_metrics(metrics):
  """One `name: value` line per metric, names aligned."""
  width = max(map(len, metrics))
  return '\n'.join(f'{name:>{width}s}: {value:.6g}'
                   for name, value in sorted(metrics.items()))


def define_flags():
  """The command's flags, defined only when it runs, so that importing this
  module (train.py does) adds nothing to `vaejax.main`'s flags."""
  flags.DEFINE_string('workdir', None,
                      'The --workdir of a training run: its config.json and '
                      'latest checkpoint are evaluated.')
  flags.DEFINE_integer(
      'k', None, 'Importance samples of the IWAE log-likelihood estimate '
      '(default: config.eval.iwae_samples, 5000 for experiments/vae.py).',
      lower_bound=1)
  flags.DEFINE_enum('split', None, ['test', 'validation'],
                    'Held-out split (default: config.eval.split).')
  flags.DEFINE_list(
      'extras', None, 'Evaluations to run, e.g. iwae,diagnostics,linear_probe,'
      'clustering (default: config.eval.extras).')
  flags.mark_flags_as_required(['workdir'])


def parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    cli.fail(f'{e}\nPass --helpshort to see the flags.')


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; pass --helpshort to see the '
         f'flags.')
  cli.quiet_library_logs()
  options = flags.FLAGS
  try:
    result = evaluate_checkpoint(options.workdir, options.k, options.split,
                                 options.extras)
  except (errors.UserError, data_lib.DataError) as e:
    cli.fail(str(e))
  print(f'Step {result["step"]}: wrote {result["metrics_path"]}')
  for path in result['figure_paths'].values():
    print(f'Step {result["step"]}: wrote {path}')
  print(format_metrics(result['metrics']))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=parse_flags)
