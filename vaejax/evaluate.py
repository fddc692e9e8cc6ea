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

from vaejax import images as image_lib
from vaejax import sharding
from vaejax.data import transforms
from vaejax.models import vae as vae_models
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
  """Evaluates a train state of an experiment on its held-out split."""

  def __init__(self, exp):
    self.exp = exp
    config = exp.config
    self.eval_config = config.eval
    use_validation = config.eval.get('split', 'test') == 'validation'
    if use_validation and exp.dataset.validation is None:
      raise ValueError(
          'config.eval.split="validation" needs config.data.validation_size '
          '> 0.')
    self.split = (exp.dataset.validation if use_validation
                  else exp.dataset.test)
    self.is_vae = isinstance(exp.model, vae_models.VAE)
    eval_key = exp.keys['eval']
    model, objective, transform = exp.model, exp.objective, exp.transform

    def objective_metrics(variables, images, positions):
      data_keys, objective_keys = per_example_keys(eval_key, positions)
      batch = {'image': images, 'inputs': transform.apply(data_keys, images)}
      loss, metrics, _ = objective(model, variables, batch, objective_keys,
                                   jnp.asarray(config.num_train_steps), False)
      metrics = dict(metrics, loss=loss)
      return {k: jnp.broadcast_to(v, loss.shape) for k, v in metrics.items()}

    self._objective_metrics = map_examples(exp.mesh, objective_metrics)

    def iwae(variables, images, positions):
      data_keys, objective_keys = per_example_keys(eval_key, positions)
      x = transform.apply(data_keys, images)
      return iwae_log_likelihood(
          model, variables, exp.likelihood, x, objective_keys,
          self.eval_config.iwae_samples, self.eval_config.iwae_chunk)

    self._iwae = map_examples(exp.mesh, iwae)

  def _variables(self, state):
    return {'params': state['params'], **state['model_state']}

  def evaluate(self, state, step, quick=False):
    """Mean metrics over the split (the first `quick_examples` if quick).

    Adds `nll_elbo` (= -ELBO, nats/example) and bits/dim where the objective
    reports an ELBO, and `nll_iwae` (k = eval.iwae_samples) on a full
    evaluation of a VAE.
    """
    del step
    images = self.split.images
    if quick:
      images = images[:self.eval_config.get('quick_examples', 2000)]
    variables = self._variables(state)
    batch_size = self.eval_config.batch_size
    per_example = run_over_split(self._objective_metrics, variables, images,
                                 batch_size)
    metrics = {k: float(np.mean(v)) for k, v in per_example.items()}
    num_dims = self.exp.num_dims
    transform = self.exp.transform
    if 'elbo' in metrics:
      metrics['nll_elbo'] = -metrics['elbo']
      if self.exp.likelihood.discrete or transform.nats_per_dim:
        metrics['bits_per_dim_elbo'] = transforms.bits_per_dim(
            metrics['nll_elbo'], num_dims, transform)
    if not quick and self.is_vae and self.eval_config.iwae_samples > 0:
      log_px = run_over_split(self._iwae, variables, images,
                              self.eval_config.get('iwae_batch_size',
                                                   batch_size))
      metrics['nll_iwae'] = float(-np.mean(log_px))
      metrics['iwae_samples'] = self.eval_config.iwae_samples
      if self.exp.likelihood.discrete or transform.nats_per_dim:
        metrics['bits_per_dim_iwae'] = transforms.bits_per_dim(
            metrics['nll_iwae'], num_dims, transform)
    metrics['eval_examples'] = len(images)
    return metrics

  def figures(self, state, num_examples=32):
    """Image grids in [0, 1]: reconstructions, samples, interpolations and,
    for a 2-D latent, the decoded manifold over the prior's quantiles."""
    if not self.is_vae:
      return {}
    model, likelihood, exp = self.exp.model, self.exp.likelihood, self.exp
    variables = self._variables(state)
    positions = jnp.arange(num_examples)
    data_keys, _ = per_example_keys(exp.keys['eval'], positions)
    x = exp.transform.apply(data_keys, jnp.asarray(
        self.split.images[:num_examples]))
    decode_mean = jax.jit(lambda z: likelihood.mean(
        model.apply(variables, z, method=model.decode)))
    mean, _ = jax.jit(lambda x: model.apply(variables, x,
                                            method=model.encode))(x)
    latent_dim = mean.shape[-1]
    grids = {}
    # Rows of 8: inputs above their reconstructions.
    recon = decode_mean(mean)
    pairs = jnp.stack([x.reshape(-1, 8, *x.shape[1:]),
                       recon.reshape(-1, 8, *x.shape[1:])], axis=1)
    grids['reconstructions'] = image_lib.make_grid(
        pairs.reshape(-1, *x.shape[1:]), num_columns=8)
    z = jax.random.normal(exp.keys['sample'], (64, latent_dim))
    grids['samples'] = image_lib.make_grid(decode_mean(z), num_columns=8)
    steps = jnp.linspace(0.0, 1.0, 10)[None, :, None]
    start, end = mean[0:16:2, None], mean[1:16:2, None]
    path = (1.0 - steps) * start + steps * end
    grids['interpolations'] = image_lib.make_grid(
        decode_mean(path.reshape(-1, latent_dim)), num_columns=10)
    if latent_dim == 2:
      quantiles = ndtri(jnp.linspace(0.05, 0.95, 20))
      grid_z = jnp.stack(jnp.meshgrid(quantiles, quantiles[::-1]), -1)
      grids['manifold'] = image_lib.make_grid(
          decode_mean(grid_z.reshape(-1, 2)), num_columns=20, padding=0)
    return grids

  def save_figure(self, workdir, name, grid, step):
    path = os.path.join(workdir, 'images', f'{name}_step{int(step):07d}.png')
    image_lib.save_png(path, grid)
    return path
