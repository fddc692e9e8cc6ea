"""Deterministic autoencoder objectives: reconstruction losses and regularisers.

`make_autoencoder(config)` returns a loss function with the shared signature
of `vaejax.objectives.vae`:

    loss_fn(model, variables, batch, keys, step, train)
        -> (per_example_loss [B], metrics {name: [B]}, model_state)

    loss = reconstruction(x, D(E(x_tilde)))          mean over the H*W*C values
         + sparsity_weight * mean_j |z_j|            sparse AE
         + contractive_weight * ||dz/dx_tilde||_F^2   contractive AE

where x_tilde is x corrupted by `config.corruption` at `corruption_level`
(denoising AE; x_tilde = x at level 0) and the target is always the clean x.
The corruption and the contractive random projections are drawn from the
per-example keys, so the loss of an example does not depend on how the batch
is split over devices. Evaluation uses the same loss on fixed keys.

Reconstruction losses work on the decoder output, which the experiment's
likelihood (`config.likelihood`) turns into the image shown in figures:
logits for 'bce' (likelihood 'bernoulli', mean = sigmoid), the image itself
for 'mse', 'mae' and 'smooth_l1' (likelihood 'gaussian' or 'laplace', whose
mean is the identity). The pairing is checked when the objective is built.
"""
import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from vaejax import errors
from vaejax import prng
from vaejax import registry
from vaejax.data import corruptions
from vaejax.objectives import likelihoods


def squared_error(x, output, config):
  del config
  return optax.squared_error(output, x)


def absolute_error(x, output, config):
  del config
  return jnp.abs(output - x)


def smooth_l1(x, output, config):
  """0.5 d^2 / beta for |d| <= beta, else |d| - 0.5 beta (d = output - x).

  Huber's loss with threshold beta, divided by beta: the quadratic piece's
  slope reaches 1 at |d| = beta, where it meets the L1 piece in value and
  slope. Small beta approaches L1, large beta approaches MSE / (2 beta).
  """
  beta = config.smooth_l1_beta
  return optax.losses.huber_loss(output, x, delta=beta) / beta


def bernoulli_cross_entropy(x, logits, config):
  """-x log sigmoid(l) - (1 - x) log sigmoid(-l), finite for any logit."""
  del config
  return -likelihoods.log_likelihood_bernoulli(x, logits)


@dataclasses.dataclass(frozen=True)
class ReconstructionLoss:
  """An elementwise loss (x, decoder output, config) -> values shaped like x,
  and the likelihoods whose `mean` shows its decoder output as an image."""
  elementwise: Callable[..., jax.Array]
  likelihoods: tuple[str, ...]


RECONSTRUCTION_LOSSES = registry.Registry('reconstruction loss', {
    'mse': ReconstructionLoss(squared_error, ('gaussian', 'laplace')),
    'mae': ReconstructionLoss(absolute_error, ('gaussian', 'laplace')),
    'smooth_l1': ReconstructionLoss(smooth_l1, ('gaussian', 'laplace')),
    'bce': ReconstructionLoss(bernoulli_cross_entropy, ('bernoulli',)),
}, 'config.objective.loss')


def reconstruction_loss(loss, x, output, config):
  """Per-example mean of the elementwise loss over the H*W*C values.

  Computed on flattened [B, H*W*C] arrays: XLA's CPU backend runs
  elementwise work on a trailing axis of size C = 1 several times slower.
  """
  batch = x.shape[0]
  values = loss.elementwise(x.reshape(batch, -1), output.reshape(batch, -1),
                            config)
  return jnp.mean(values, axis=-1)


def shown_image(likelihood, output):
  """The reconstruction as an image in [0, 1]: the likelihood's mean of the
  decoder output, clipped as it is when drawn."""
  return jnp.clip(likelihood.mean(output), 0.0, 1.0)


def mean_squared_error_per_example(image, x):
  """[B, H, W, C] pair -> [B] mean squared difference over the values."""
  return jnp.mean(jnp.square(image - x).reshape(x.shape[0], -1), axis=-1)


def corruption_and_projection_keys(keys):
  """[B] objective keys -> ([B] corruption keys, [B] projection keys)."""
  return prng.split_per_example(keys, 2)


def corrupt(config, keys, x):
  """x_tilde: x corrupted as `config` says, unchanged at level 0."""
  level = config.corruption_level
  if not level:
    return x
  return corruptions.get_corruption(config.corruption)(keys, x, level)


def jacobian_sq_norm_exact(encode, x, keys):
  """Codes [B, d] and ||dz_i/dx_i||_F^2 [B], exactly (`keys` unused: the
  signature is the random-projection estimate's).

  One pullback per code unit (vmapped): cotangent e_j for every example
  gives row j of each example's Jacobian, because an encoder maps examples
  independently (its batch Jacobian is block diagonal). Cost: d backward
  passes, whatever the input size.
  """
  del keys
  code, pullback = jax.vjp(encode, x)
  batch, code_dim = code.shape
  # Added to zeros derived from the code so that, under shard_map, the
  # cotangents vary over devices like the code they pull back.
  basis = (jnp.zeros_like(code)[None]
           + jnp.eye(code_dim, dtype=code.dtype)[:, None])
  (rows,) = jax.vmap(pullback)(basis)
  return code, jnp.sum(jnp.square(rows.reshape(code_dim, batch, -1)),
                       axis=(0, 2))


def jacobian_sq_norm_random_projection(encode, x, keys, num_projections=1):
  """Codes [B, d] and an unbiased estimate of ||dz_i/dx_i||_F^2 [B].

  Hutchinson: E_v ||J v||^2 = tr(J E[v v^T] J^T) = ||J||_F^2 for v in input
  space with E[v v^T] = I; Rademacher entries give the lowest variance among
  i.i.d. choices. Each projection is one forward-mode pass on top of a
  single linearisation: M passes instead of the exact d, whatever the code
  size, and forward mode never stores a [d, B, H, W, C] stack of rows.
  """
  code, push_forward = jax.linearize(encode, x)
  num_values = x[0].size

  def directions(key):
    return jax.random.rademacher(key, (num_projections, num_values), x.dtype)

  v = jax.vmap(directions)(keys)  # [B, M, D]
  v = jnp.swapaxes(v, 0, 1).reshape(num_projections, *x.shape)
  projected = jax.vmap(push_forward)(v)  # [M, B, d]
  return code, jnp.mean(jnp.sum(jnp.square(projected), axis=-1), axis=0)


JACOBIAN_ESTIMATORS = registry.Registry('contractive estimator', {
    'exact': lambda config: jacobian_sq_norm_exact,
    'random_projection': lambda config: functools.partial(
        jacobian_sq_norm_random_projection,
        num_projections=config.num_projections),
}, 'config.objective.contractive_estimator')


def _check_config(config, loss):
  if config.likelihood not in loss.likelihoods:
    raise errors.ConfigError(
        f'config.objective.loss={config.loss!r} needs a likelihood that '
        f'shows its decoder output as an image: one of {loss.likelihoods}, '
        f'got config.objective.likelihood={config.likelihood!r}. '
        f'experiments/ae.py sets it from the loss.')
  if config.loss == 'smooth_l1' and config.smooth_l1_beta <= 0:
    raise errors.ConfigError(
        f'config.objective.smooth_l1_beta must be positive, got '
        f'{config.smooth_l1_beta}; use loss=mae for the plain L1 loss.')
  if config.corruption_level < 0:
    raise errors.ConfigError(
        f'config.objective.corruption_level must be >= 0, got '
        f'{config.corruption_level}.')
  corruptions.get_corruption(config.corruption)
  JACOBIAN_ESTIMATORS.get(config.contractive_estimator)


def make_autoencoder(config):
  """The (sparse, denoising, contractive) autoencoder loss of `config`.

  Metrics: the reconstruction loss; `image_mse`, the MSE of the image shown
  (in [0, 1]) against the clean input, comparable across losses; the mean
  |z| and the fraction of code units with |z| < `near_zero_threshold`
  (sparsity); for a contractive AE the squared Jacobian norm (its estimate
  with the random-projection estimator).
  """
  loss = RECONSTRUCTION_LOSSES.get(config.loss)
  _check_config(config, loss)
  likelihood = likelihoods.get_likelihood(config)
  sparsity_weight = config.sparsity_weight
  near_zero_threshold = config.near_zero_threshold
  contractive_weight = config.contractive_weight
  jacobian_sq_norm = JACOBIAN_ESTIMATORS.get(
      config.contractive_estimator)(config)

  def loss_fn(model, variables, batch, keys, step, train):
    del step, train
    x = batch['inputs']
    corruption_keys, projection_keys = corruption_and_projection_keys(keys)
    encoder_input = corrupt(config, corruption_keys, x)

    def encode(inputs):
      return model.apply(variables, inputs, method=model.encode)

    metrics = {}
    if contractive_weight:
      code, metrics['jacobian_sq_norm'] = jacobian_sq_norm(
          encode, encoder_input, projection_keys)
    else:
      code = encode(encoder_input)
    output = model.apply(variables, code, method=model.decode)
    reconstruction = reconstruction_loss(loss, x, output, config)
    code_abs = jnp.abs(code)
    metrics['reconstruction_loss'] = reconstruction
    metrics['image_mse'] = mean_squared_error_per_example(
        shown_image(likelihood, output), x)
    metrics['code_mean_abs'] = jnp.mean(code_abs, axis=-1)
    metrics['near_zero_code_fraction'] = jnp.mean(
        (code_abs < near_zero_threshold).astype(jnp.float32), axis=-1)
    per_example_loss = reconstruction
    if sparsity_weight:
      per_example_loss += sparsity_weight * metrics['code_mean_abs']
    if contractive_weight:
      per_example_loss += contractive_weight * metrics['jacobian_sq_norm']
    return per_example_loss, metrics, {}

  return loss_fn
