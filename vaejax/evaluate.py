"""Evaluation: the objective's metrics on held-out data, the IWAE
log-likelihood estimate, bits/dim, and image grids.

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
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P
from jax.scipy.special import ndtri

from vaejax import errors
from vaejax import images as image_lib
from vaejax import registry
from vaejax import sharding
from vaejax.data import transforms
from vaejax.objectives import vae as vae_objectives


def per_example_keys(key, positions):
  """The (data, objective) keys of examples at `positions` (as in training)."""
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, positions)
  split = jax.vmap(lambda k: jax.random.split(k, 2))(keys)
  return split[:, 0], split[:, 1]


def map_examples(mesh, fn):
  """jit(shard_map(fn)) for fn(replicated, images [B], positions [B]) -> tree of [B, ...]."""
  return jax.jit(jax.shard_map(
      fn, mesh=mesh,
      in_specs=(P(), P(sharding.DATA_AXIS), P(sharding.DATA_AXIS)),
      out_specs=P(sharding.DATA_AXIS)))


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
    out = jax.device_get(compiled_fn(replicated, chunk, positions))
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


EVALUATIONS = registry.Registry('evaluation', {
    'iwae': iwae_metrics,
}, 'config.eval.extras')


def _figure_inputs(evaluator, num_examples=32):
  positions = jnp.arange(num_examples)
  images = jnp.asarray(evaluator.split.images[:num_examples])
  return evaluator.inputs(images, positions)[0]


def _encode_mean(evaluator, variables, x):
  """The code of x: the posterior mean for a VAE, the code for an AE."""
  model = evaluator.exp.model
  code = model.apply(variables, x, method=model.encode)
  return code[0] if isinstance(code, tuple) else code


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


FIGURES = registry.Registry('figure', {
    'reconstructions': reconstructions_figure,
    'samples': samples_figure,
    'interpolations': interpolations_figure,
    'manifold': manifold_figure,
}, 'config.eval.figures')
