"""Autoregressive categorical objective: -log p(codes) of a prior over code
grids (the PixelCNN prior of a VQ-VAE, `models.pixelcnn_prior`).

log p(c) = sum_i log softmax(logits_i)[c_i] over the h * w positions, the
logits at i computed from the codes before i. Metrics: nats per code and
per image (= the loss), bits per code.
"""
import math

import jax
import jax.numpy as jnp


def categorical_log_prob(logits, codes):
  """sum over positions of log softmax(logits)[codes]: logits [B, h, w, K],
  codes [B, h, w] (float or int) -> [B]."""
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(
      log_probs, codes.astype(jnp.int32)[..., None], axis=-1)[..., 0]
  return jnp.sum(picked.reshape(picked.shape[0], -1), axis=-1)


def make_autoregressive(config):
  """-log p(codes) per example; `config` (config.objective) has no keys of
  its own beyond the shared likelihood block."""
  del config

  def loss_fn(model, variables, batch, keys, step, train):
    del keys, step, train
    codes = batch['inputs']
    labels = (batch['label'] if model.network.num_classes is not None
              else None)
    logits = model.apply(variables, codes, labels)
    nll = -categorical_log_prob(logits, codes)
    num_positions = math.prod(codes.shape[1:])
    metrics = {'nll_per_image': nll,
               'nats_per_code': nll / num_positions,
               'bits_per_code': nll / (num_positions * math.log(2.0))}
    return nll, metrics, {}

  return loss_fn
