"""VQ-VAE (vaejax/models/vqvae.py, vaejax/objectives/vqvae.py): the loss
terms' gradients through the model, the EMA codebook against its formula and
on 1 and 8 devices, perplexity, dead-code restarts, the uniform-prior bound.

(Nearest codes, the straight-through estimator and the codebook/commitment
terms as pure functions are tested in vector_quantizer_test.py.)
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multidevice import run_python
from vaejax import errors
from vaejax import models
from vaejax.configs import loading
from vaejax.objectives import likelihoods
from vaejax.objectives import vqvae as vqvae_objectives

SMALL = {'model.channels': (4, 8), 'model.code_dim': 3, 'model.num_codes': 6}


def small_family(arg='binarized'):
  config = loading.load_config(f'experiments/vqvae.py:{arg}', **SMALL)
  likelihood = likelihoods.get_likelihood(config.objective)
  return models.build_family(config, (28, 28, 1), likelihood), config


def images(num=4, seed=0):
  return jax.random.bernoulli(jax.random.key(seed), 0.3,
                              (num, 28, 28, 1)).astype(jnp.float32)


def test_codebook_term_moves_only_the_codebook_and_commitment_only_the_encoder():
  family, _ = small_family()
  x = images()
  variables = family.model.init(jax.random.key(0), x)

  def grads(term):
    return jax.grad(lambda params: jnp.sum(family.model.apply(
        {'params': params}, x)[term]))(variables['params'])

  codebook_grads, commitment_grads = grads('codebook_loss'), grads(
      'commitment_loss')
  norm = lambda tree: float(sum(jnp.sum(jnp.abs(g))  # noqa: E731
                                for g in jax.tree.leaves(tree)))
  assert norm(codebook_grads['encoder']) == 0.0
  assert norm(codebook_grads['decoder']) == 0.0
  assert norm(codebook_grads['quantizer']) > 0.0
  assert norm(commitment_grads['quantizer']) == 0.0
  assert norm(commitment_grads['decoder']) == 0.0
  assert norm(commitment_grads['encoder']) > 0.0


def test_reconstruction_gradient_reaches_the_encoder_straight_through():
  """d recon / d z_e equals d recon / d z_q: the decoder's gradient at the
  quantised point passes to the encoder unchanged."""
  family, _ = small_family()
  model = family.model
  x = images()
  variables = model.init(jax.random.key(0), x)
  z_e = model.apply(variables, x, method=model.encode)

  def through_quantizer(z_e):
    quantized = model.apply(variables, z_e, method=lambda m, z: m.quantizer(z))
    return jnp.sum(jnp.sin(model.apply(variables, quantized['quantized'],
                                       method=lambda m, z: m.decoder(z))))

  z_q = model.apply(variables, z_e,
                    method=lambda m, z: m.quantizer(z))['codebook_vectors']
  at_z_q = jax.grad(lambda z: jnp.sum(jnp.sin(model.apply(
      variables, z, method=lambda m, z: m.decoder(z)))))(z_q)
  np.testing.assert_allclose(jax.grad(through_quantizer)(z_e), at_z_q,
                             rtol=1e-5, atol=1e-6)


def test_ema_update_and_smoothed_codebook_equal_their_formulas():
  counts = jnp.array([0.5, 0.3, 0.2, 0.0])
  sums = jnp.array([[1.0, 0.0], [0.0, 0.6], [0.2, 0.2], [0.0, 0.0]])
  z_e = jnp.array([[[1.0, 2.0], [3.0, -1.0]], [[0.0, 1.0], [2.0, 2.0]]])
  codes = jnp.array([[0, 2], [0, 1]])
  usage = vqvae_objectives.code_usage(codes, 4)
  np.testing.assert_allclose(usage, [0.5, 0.25, 0.25, 0.0])
  assigned = vqvae_objectives.code_sums(z_e, codes, 4)
  np.testing.assert_allclose(
      assigned, np.array([[1.0, 3.0], [2.0, 2.0], [3.0, -1.0], [0, 0]]) / 4)
  decay, eps = 0.9, 0.01
  new_counts, new_sums = vqvae_objectives.ema_update(counts, sums, usage,
                                                     assigned, decay)
  expected_counts = 0.9 * np.array([0.5, 0.3, 0.2, 0.0]) + 0.1 * np.array(
      [0.5, 0.25, 0.25, 0.0])
  np.testing.assert_allclose(new_counts, expected_counts, rtol=1e-6)
  np.testing.assert_allclose(new_sums, 0.9 * np.asarray(sums)
                             + 0.1 * np.asarray(assigned), rtol=1e-6)
  total = expected_counts.sum()
  smoothed = (expected_counts + eps) / (total + 4 * eps) * total
  np.testing.assert_allclose(
      vqvae_objectives.smoothed_codebook(new_counts, new_sums, eps),
      np.asarray(new_sums) / smoothed[:, None], rtol=1e-5)


def test_perplexity_is_k_for_uniform_use_and_1_for_one_code():
  uniform = vqvae_objectives.code_usage(jnp.arange(12) % 6, 6)
  assert float(vqvae_objectives.perplexity(uniform)) == pytest.approx(6.0)
  one = vqvae_objectives.code_usage(jnp.full((10,), 3), 6)
  assert float(vqvae_objectives.perplexity(one)) == pytest.approx(1.0)
  half = vqvae_objectives.code_usage(jnp.array([0, 0, 1, 1]), 6)
  assert float(vqvae_objectives.perplexity(half)) == pytest.approx(2.0)


def test_dead_code_restart_replaces_exactly_the_dead_codes():
  counts = jnp.array([0.4, 0.0001, 0.3, 0.0, 0.2999])
  sums = jax.random.normal(jax.random.key(0), (5, 3))
  candidates = jax.random.normal(jax.random.key(1), (20, 3)) + 10.0
  dead = counts < 0.05 / 5
  eps = 1e-5
  before = vqvae_objectives.smoothed_codebook(counts, sums, eps)
  new_counts, new_sums = vqvae_objectives.restart_dead_codes(
      jax.random.key(2), counts, sums, candidates, dead, eps)
  after = vqvae_objectives.smoothed_codebook(new_counts, new_sums, eps)
  np.testing.assert_array_equal(np.asarray(dead), [0, 1, 0, 1, 0])
  for k in (1, 3):  # Each a candidate, with the count of uniform use.
    distances = np.abs(np.asarray(candidates) - np.asarray(after[k])).sum(1)
    assert distances.min() < 1e-4
    assert float(new_counts[k]) == pytest.approx(0.2)
  for k in (0, 2, 4):
    assert float(new_counts[k]) == float(counts[k])
    np.testing.assert_array_equal(new_sums[k], sums[k])
    # Only the smoothing's normaliser moves the live codes' vectors.
    np.testing.assert_allclose(after[k], before[k], rtol=0.05)


def test_uniform_prior_bound_is_reconstruction_plus_49_log_k():
  family, config = small_family()
  x = images()
  variables = family.model.init(jax.random.key(0), x)
  keys = jax.random.split(jax.random.key(1), 4)
  recon = family.reconstruction_nll(variables, x, keys)
  output = family.model.apply(variables, x)['output']
  np.testing.assert_allclose(
      recon, -family.likelihood.log_prob(output, x), rtol=1e-5)
  np.testing.assert_allclose(
      family.log_likelihood_bound(variables, x, keys, 1, 1),
      -recon - 49 * math.log(config.model.num_codes), rtol=1e-6)
  grid = family.code_grid(variables, x)
  assert grid.shape == (4, 7, 7) and grid.dtype == jnp.int32
  assert family.decode_code_grid(variables, grid).shape == (4, 28, 28, 1)
  assert family.represent(variables, x).shape == (4, 49 * 3)
  assert 'prior' in family.lacking('sample')


EMA_DEVICES_SCRIPT = '''
import json, sys
import jax, numpy as np
sys.path.insert(0, 'tests')
from conftest import tiny_config
from vaejax import train
results = {{}}
for num_devices in (1, 8):
  config = tiny_config({data_dir!r}, 'vqvae', 'binarized,ema,runlocal',
                       num_devices=num_devices, num_train_steps=4,
                       steps_per_dispatch=2, log_every=2, checkpoint_every=4,
                       **{{'model.channels': (4, 8), 'model.code_dim': 3,
                          'model.num_codes': 16, 'objective.restart_below': 0.5,
                          'eval.max_examples': 16, 'eval.extras': (),
                          'eval.figures': ()}})
  out = train.train_and_evaluate(config, {workdir!r} + f'/{{num_devices}}')
  stats = out['state']['model_state']['codebook_ema']['quantizer']
  results[num_devices] = {{k: np.asarray(v).tolist() for k, v in stats.items()}}
print(json.dumps(results))
'''


def test_ema_codebook_is_the_same_on_1_and_8_devices(tiny_data_dir, tmp_path):
  """Four steps with restarts (every code used less than half of uniform
  restarts): the EMA statistics agree to float rounding."""
  results = run_python(EMA_DEVICES_SCRIPT.format(
      data_dir=tiny_data_dir, workdir=str(tmp_path)), num_devices=8)
  for key in ('counts', 'sums'):
    np.testing.assert_allclose(results['1'][key], results['8'][key],
                               rtol=1e-4, atol=1e-6, err_msg=key)
  assert not np.allclose(results['1']['counts'], 1.0 / 16)


def test_an_unknown_codebook_update_fails_with_the_known_ones():
  config = loading.load_config('experiments/vqvae.py',
                               **{'model.codebook_update': 'em'})
  with pytest.raises(errors.ConfigError, match="codebook_update='em'.*ema"):
    models.build_family(config, (28, 28, 1),
                        likelihoods.get_likelihood(config.objective))
