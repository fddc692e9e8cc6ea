"""Tests for deterministic autoencoders: losses, corruptions, the contractive
penalty, the PCA property of a linear autoencoder, and training end to end.

Loss values are checked against hand-computed numbers, corruptions against
their defining statistics, the Jacobian norm against jax.jacfwd and its
random-projection estimate against the exact value within its standard error.
"""
import glob
import math
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vaejax import data
from vaejax import errors
from vaejax.configs import loading
from vaejax import models
from vaejax import registry
from vaejax import train
from vaejax.data import corruptions
from vaejax.objectives import autoencoder as autoencoder_objectives
from vaejax.objectives import likelihoods
import multidevice

IMAGE_SHAPE = (28, 28, 1)


def ae_config(data_dir, arg='runlocal', **overrides):
  """experiments/ae.py:<arg> on the tiny IDX data set, with overrides."""
  defaults = {'data.dir': data_dir, 'data.source': 'idx', 'batch_size': 32,
              'eval.batch_size': 32}
  return loading.load_config(f'experiments/ae.py:{arg}',
                                      **{**defaults, **overrides})


def objective_config(**fields):
  """The objective block of experiments/ae.py with `fields` changed."""
  config = ml_collections.ConfigDict(
      loading.load_config('experiments/ae.py').objective.to_dict())
  config.update(fields)
  return config


def per_example_keys(seed, num_examples):
  return jax.random.split(jax.random.key(seed), num_examples)


def build(model_name, code_dim=8, likelihood='gaussian', **model_fields):
  config = ml_collections.ConfigDict(dict(
      name=model_name, hidden_sizes=(32,), code_dim=code_dim,
      channels=(8, 16), hidden_size=32, code_activation='linear',
      conv_impl='auto', image_shape=None))
  config.update(model_fields)
  return models.build_family(
      ml_collections.ConfigDict(dict(model=config)), IMAGE_SHAPE,
      likelihoods.get_likelihood(objective_config(likelihood=likelihood))).model


# --- Reconstruction losses --------------------------------------------------

# One example of four values; output - x = (0.5, 0, -1, 0.7).
X = np.array([0.0, 0.5, 1.0, 0.2], np.float32)
OUTPUT = np.array([0.5, 0.5, 0.0, 0.9], np.float32)


def _log_sigmoid(logit):
  return -math.log1p(math.exp(-logit))


EXPECTED_LOSSES = {
    'mse': (0.25 + 0.0 + 1.0 + 0.49) / 4,
    'mae': (0.5 + 0.0 + 1.0 + 0.7) / 4,
    # beta = 0.6: |0.5| <= beta -> 0.5 * 0.25 / 0.6; |1| and |0.7| > beta ->
    # |d| - 0.3.
    'smooth_l1': (0.5 * 0.25 / 0.6 + 0.0 + 0.7 + 0.4) / 4,
    'bce': -sum(x * _log_sigmoid(l) + (1 - x) * _log_sigmoid(-l)
                for x, l in zip(X.tolist(), OUTPUT.tolist())) / 4,
}


@pytest.mark.parametrize('loss_name', sorted(EXPECTED_LOSSES))
def test_losses_match_hand_computed_values(loss_name):
  loss = autoencoder_objectives.RECONSTRUCTION_LOSSES.get(loss_name)
  value = autoencoder_objectives.reconstruction_loss(
      loss, jnp.asarray(X).reshape(1, 2, 2, 1),
      jnp.asarray(OUTPUT).reshape(1, 2, 2, 1),
      objective_config(smooth_l1_beta=0.6))
  chex.assert_shape(value, (1,))
  np.testing.assert_allclose(value, [EXPECTED_LOSSES[loss_name]], rtol=1e-6)


@pytest.mark.parametrize('beta', [0.05, 0.5, 2.0])
def test_smooth_l1_is_continuous_at_beta(beta):
  config = objective_config(smooth_l1_beta=beta)
  eps = 1e-4 * beta
  d = jnp.array([beta - eps, beta, beta + eps, -beta - eps, -beta + eps])
  values = autoencoder_objectives.smooth_l1(jnp.zeros_like(d), d, config)
  # Both pieces give beta / 2 at |d| = beta, and their slopes are 1 there.
  np.testing.assert_allclose(values[1], 0.5 * beta, rtol=1e-6)
  # Near beta both pieces follow the same tangent line.
  np.testing.assert_allclose(values, 0.5 * beta + (jnp.abs(d) - beta),
                             rtol=1e-4)
  slopes = jax.vmap(jax.grad(
      lambda v: autoencoder_objectives.smooth_l1(0.0, v, config)))(d)
  np.testing.assert_allclose(jnp.abs(slopes), 1.0, atol=2e-4)


def test_smooth_l1_pieces():
  config = objective_config(smooth_l1_beta=0.5)
  small, large = jnp.array(0.2), jnp.array(3.0)
  np.testing.assert_allclose(
      autoencoder_objectives.smooth_l1(0.0, small, config), 0.04 / 0.5 / 2,
      rtol=1e-6)
  np.testing.assert_allclose(
      autoencoder_objectives.smooth_l1(0.0, large, config), 3.0 - 0.25,
      rtol=1e-6)


def test_bce_is_finite_for_extreme_logits():
  x = jnp.array([1.0, 0.0, 1.0, 0.0, 0.5])
  logits = jnp.array([1e4, 1e4, -1e4, -1e4, 1e4])
  values = autoencoder_objectives.bernoulli_cross_entropy(
      x, logits, objective_config())
  chex.assert_tree_all_finite(values)
  np.testing.assert_allclose(values, [0.0, 1e4, 1e4, 0.0, 5e3], rtol=1e-6)
  chex.assert_tree_all_finite(jax.grad(
      lambda l: jnp.sum(autoencoder_objectives.bernoulli_cross_entropy(
          x, l, objective_config())))(logits))


def test_loss_and_likelihood_must_agree():
  with pytest.raises(errors.ConfigError, match='bernoulli'):
    autoencoder_objectives.make_autoencoder(
        objective_config(loss='bce', likelihood='gaussian'))
  with pytest.raises(errors.ConfigError, match='gaussian'):
    autoencoder_objectives.make_autoencoder(
        objective_config(loss='mae', likelihood='bernoulli'))
  with pytest.raises(registry.UnknownNameError, match='smooth_l1'):
    autoencoder_objectives.make_autoencoder(objective_config(loss='huber'))
  with pytest.raises(errors.ConfigError, match='positive'):
    autoencoder_objectives.make_autoencoder(
        objective_config(loss='smooth_l1', smooth_l1_beta=0.0))


# --- Corruptions ------------------------------------------------------------


def _images(num_examples=64, seed=0):
  """Values strictly inside (0, 1), so 0 and 1 mark corrupted entries."""
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(0.05, 0.95, (num_examples, *IMAGE_SHAPE)),
                     jnp.float32)


def _within(fraction, probability, num, num_standard_errors=5):
  standard_error = math.sqrt(probability * (1 - probability) / num)
  return abs(fraction - probability) <= num_standard_errors * standard_error


@pytest.mark.parametrize('rate', [0.1, 0.5])
def test_masking_noise_zeroes_a_fraction_nu(rate):
  x = _images()
  noisy = corruptions.masking_noise(per_example_keys(0, len(x)), x, rate)
  zeroed = np.asarray(noisy == 0.0)
  assert _within(zeroed.mean(), rate, zeroed.size)
  np.testing.assert_array_equal(np.asarray(noisy)[~zeroed],
                                np.asarray(x)[~zeroed])


@pytest.mark.parametrize('stddev', [0.1, 0.5])
def test_gaussian_noise_has_standard_deviation_sigma(stddev):
  x = _images()
  noise = np.asarray(corruptions.additive_gaussian_noise(
      per_example_keys(1, len(x)), x, stddev) - x, np.float64)
  assert abs(noise.mean()) < 5 * stddev / math.sqrt(noise.size)
  # The sample standard deviation of n normals has standard error ~ s/sqrt(2n).
  assert abs(noise.std() - stddev) < 5 * stddev / math.sqrt(2 * noise.size)


def test_salt_and_pepper_sets_half_to_zero_and_half_to_one():
  rate = 0.2
  x = _images()
  noisy = np.asarray(corruptions.salt_and_pepper_noise(
      per_example_keys(2, len(x)), x, rate))
  pepper, salt = noisy == 0.0, noisy == 1.0
  assert _within(pepper.mean(), rate / 2, noisy.size)
  assert _within(salt.mean(), rate / 2, noisy.size)
  unchanged = ~(pepper | salt)
  np.testing.assert_array_equal(noisy[unchanged], np.asarray(x)[unchanged])


@pytest.mark.parametrize('name', corruptions.CORRUPTIONS.names())
def test_corruptions_are_reproducible_and_independent_of_batch_split(name):
  corrupt = corruptions.get_corruption(name)
  x = _images(8)
  keys = per_example_keys(3, 8)
  whole = corrupt(keys, x, 0.3)
  chex.assert_shape(whole, x.shape)
  chex.assert_trees_all_equal(whole, corrupt(keys, x, 0.3))
  halves = jnp.concatenate([corrupt(keys[:3], x[:3], 0.3),
                            corrupt(keys[3:], x[3:], 0.3)])
  chex.assert_trees_all_equal(whole, halves)
  assert not np.array_equal(whole, corrupt(per_example_keys(4, 8), x, 0.3))


# --- Models -----------------------------------------------------------------


@pytest.mark.parametrize('likelihood', ['bernoulli', 'gaussian'])
@pytest.mark.parametrize('model_name', ['mlp_autoencoder', 'conv_autoencoder'])
def test_shapes(model_name, likelihood):
  model = build(model_name, code_dim=8, likelihood=likelihood)
  x = jnp.zeros((5, *IMAGE_SHAPE))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  code = jax.eval_shape(
      lambda v, x: model.apply(v, x, method=model.encode), variables, x)
  chex.assert_shape(code, (5, 8))
  decoded = jax.eval_shape(
      lambda v, z: model.apply(v, z, method=model.decode), variables, code)
  chex.assert_shape(decoded, (5, *IMAGE_SHAPE))
  chex.assert_shape(jax.eval_shape(model.apply, variables, x),
                    (5, *IMAGE_SHAPE))


def test_relu_code_is_nonnegative_and_linear_autoencoder_has_two_layers():
  model = build('mlp_autoencoder', code_activation='relu')
  x = _images(4)
  variables = model.init(jax.random.key(0), x)
  assert bool(jnp.all(model.apply(variables, x, method=model.encode) >= 0))
  linear = build('mlp_autoencoder', hidden_sizes=())
  shapes = jax.eval_shape(linear.init, jax.random.key(0), x)['params']
  assert jax.tree.map(lambda s: s.shape, shapes) == {
      'encoder': {'code': {'kernel': (784, 8), 'bias': (8,)}},
      'decoder': {'output': {'kernel': (8, 784), 'bias': (784,)}}}


def test_bottleneck_must_be_smaller_than_the_input():
  with pytest.raises(errors.ConfigError, match='undercomplete'):
    build('mlp_autoencoder', code_dim=784)
  with pytest.raises(errors.ConfigError, match='divisible by 8'):
    build('conv_autoencoder', channels=(8, 16, 32))


# --- Objective --------------------------------------------------------------


@pytest.fixture(scope='module')
def linear_autoencoder():
  model = build('mlp_autoencoder', code_dim=3, hidden_sizes=())
  x = _images(6)
  return model, model.init(jax.random.key(0), x), x


def test_objective_adds_sparsity_and_exact_contraction(linear_autoencoder):
  """For z = W^T x + b the Jacobian is W^T, so ||dz/dx||_F^2 = sum W^2."""
  model, variables, x = linear_autoencoder
  loss_fn = autoencoder_objectives.make_autoencoder(objective_config(
      sparsity_weight=0.1, contractive_weight=0.01))
  loss, metrics, state = loss_fn(model, variables, {'inputs': x},
                                 per_example_keys(0, 6), 0, True)
  assert state == {}
  code = model.apply(variables, x, method=model.encode)
  mse = jnp.mean(jnp.square(model.apply(variables, x) - x), axis=(1, 2, 3))
  kernel = variables['params']['encoder']['code']['kernel']
  chex.assert_trees_all_close(metrics['jacobian_sq_norm'],
                              jnp.full(6, jnp.sum(jnp.square(kernel))),
                              rtol=1e-5)
  expected = (mse + 0.1 * jnp.mean(jnp.abs(code), -1)
              + 0.01 * jnp.sum(jnp.square(kernel)))
  chex.assert_trees_all_close(loss, expected, rtol=1e-5)
  chex.assert_trees_all_close(metrics['reconstruction_loss'], mse, rtol=1e-5)
  for value in metrics.values():
    chex.assert_shape(value, (6,))


def test_denoising_reconstructs_the_clean_input(linear_autoencoder):
  """Masking everything (nu = 1) leaves the code of a blank image, and the
  loss still compares the reconstruction with the clean x."""
  model, variables, x = linear_autoencoder
  loss_fn = autoencoder_objectives.make_autoencoder(objective_config(
      corruption='masking', corruption_level=1.0))
  loss, _, _ = loss_fn(model, variables, {'inputs': x},
                       per_example_keys(0, 6), 0, True)
  blank = model.apply(variables, jnp.zeros_like(x))
  chex.assert_trees_all_close(
      loss, jnp.mean(jnp.square(blank - x), axis=(1, 2, 3)), rtol=1e-5)


def test_objective_is_independent_of_batch_split(linear_autoencoder):
  model, variables, x = linear_autoencoder
  loss_fn = jax.jit(autoencoder_objectives.make_autoencoder(objective_config(
      corruption='gaussian', corruption_level=0.3, contractive_weight=0.1,
      contractive_estimator='random_projection', num_projections=2)),
                    static_argnums=(0,))
  keys = per_example_keys(5, 6)
  whole, _, _ = loss_fn(model, variables, {'inputs': x}, keys, 0, True)
  first, _, _ = loss_fn(model, variables, {'inputs': x[:3]}, keys[:3], 0, True)
  rest, _, _ = loss_fn(model, variables, {'inputs': x[3:]}, keys[3:], 0, True)
  chex.assert_trees_all_close(whole, jnp.concatenate([first, rest]),
                              rtol=1e-6)


# --- Contractive penalty ----------------------------------------------------


@pytest.fixture(scope='module')
def nonlinear_encoder():
  model = build('mlp_autoencoder', code_dim=4, hidden_sizes=(16,))
  x = _images(3)
  variables = model.init(jax.random.key(1), x)

  def encode(inputs):
    return model.apply(variables, inputs, method=model.encode)

  def brute_force(example):
    jacobian = jax.jacfwd(lambda e: encode(e[None])[0])(example)
    return jnp.sum(jnp.square(jacobian))

  return encode, x, jax.jit(jax.vmap(brute_force))(x)


def test_exact_jacobian_norm_matches_jacfwd(nonlinear_encoder):
  encode, x, expected = nonlinear_encoder
  code, sq_norm = autoencoder_objectives.jacobian_sq_norm_exact(
      encode, x, per_example_keys(0, 3))
  chex.assert_trees_all_close(code, encode(x))
  chex.assert_trees_all_close(sq_norm, expected, rtol=1e-5)


def test_random_projection_estimate_is_unbiased(nonlinear_encoder):
  """4000 one-projection estimates of one example's ||J||_F^2 average to the
  exact value within 4 standard errors."""
  encode, x, expected = nonlinear_encoder
  num = 4000
  copies = jnp.broadcast_to(x[:1], (num, *x.shape[1:]))
  code, estimates = jax.jit(
      autoencoder_objectives.jacobian_sq_norm_random_projection,
      static_argnums=(0,))(encode, copies, per_example_keys(7, num))
  # A batch of 4000 under jit and one example eagerly may sum the matmuls in
  # a different order (seen: relative differences of 2e-6).
  chex.assert_trees_all_close(code[0], encode(x[:1])[0], rtol=1e-5, atol=1e-6)
  estimates = np.asarray(estimates, np.float64)
  standard_error = estimates.std(ddof=1) / math.sqrt(num)
  assert standard_error > 0
  assert abs(estimates.mean() - float(expected[0])) < 4 * standard_error
  # More projections per example average the same draws: lower variance.
  _, averaged = autoencoder_objectives.jacobian_sq_norm_random_projection(
      encode, x, per_example_keys(8, 3), num_projections=256)
  chex.assert_trees_all_close(averaged, expected, rtol=0.3)


# --- A linear autoencoder learns the principal subspace ---------------------


def test_linear_autoencoder_spans_the_principal_subspace(tiny_data_dir,
                                                         tmp_path):
  """Trained with MSE through the train loop (full batch), the decoder's rows
  span the top-3 principal components of the training images."""
  code_dim = 3
  config = ae_config(
      tiny_data_dir, f'linear,code={code_dim},runlocal', batch_size=256,
      num_train_steps=2000, steps_per_dispatch=1000, log_every=1000,
      checkpoint_every=0, **{'optimizer.learning_rate': 1e-2,
                             'eval.extras': (), 'eval.figures': ()})
  result = train.train_and_evaluate(config, str(tmp_path))
  decoder_rows = np.asarray(
      result['state']['params']['decoder']['output']['kernel'], np.float64)

  images = data.load_dataset(config.data).train.images
  x = images.reshape(len(images), -1).astype(np.float64) / 255.0
  _, _, components = np.linalg.svd(x - x.mean(0), full_matrices=False)
  basis, _ = np.linalg.qr(decoder_rows.T)
  cosines = np.linalg.svd(components[:code_dim] @ basis, compute_uv=False)
  angles = np.degrees(np.arccos(np.clip(cosines, -1.0, 1.0)))
  assert np.all(angles < 5.0), angles


# --- Training end to end ----------------------------------------------------

# Every loss and regulariser, through the one train loop and evaluator. The
# plain run measures everything; the others skip the probe and the generic
# figures, whose compilation dominates a run this short. The conv run is
# narrower and evaluates only the objective: XLA compiles convolutions
# slowly on CPU.
_LEAN = {'eval.extras': ('denoising',), 'eval.figures': ('denoising',)}
VARIANTS = {
    'runlocal': {},
    'loss=bce,sparse,denoising=salt_and_pepper,runlocal': _LEAN,
    'loss=smooth_l1,beta=0.5,contractive,denoising=masking,runlocal': _LEAN,
    'loss=mae,conv,contractive,projections=2,denoising,runlocal': {
        'eval.extras': (), 'eval.figures': (), 'num_train_steps': 10,
        'model.channels': (8, 16), 'model.hidden_size': 32},
}


@pytest.mark.parametrize('arg', sorted(VARIANTS))
def test_runlocal_variant_trains_and_evaluates(arg, tiny_data_dir, tmp_path):
  config = ae_config(tiny_data_dir, arg, **VARIANTS[arg])
  result = train.train_and_evaluate(config, str(tmp_path))
  metrics = result['metrics']
  assert int(result['state']['step']) == config.num_train_steps
  chex.assert_tree_all_finite(result['state']['params'])
  assert all(np.isfinite(v) for v in metrics.values()), metrics
  corruption = config.objective.corruption
  if 'denoising' in config.eval.extras:
    for level in config.eval.denoising_levels:
      assert f'psnr_denoised_{corruption}_{level:g}' in metrics
      assert f'psnr_noisy_{corruption}_{level:g}' in metrics
  assert 0.0 <= metrics['near_zero_code_fraction'] <= 1.0
  assert ('jacobian_sq_norm' in metrics) == ('contractive' in arg)
  if 'linear_probe' in config.eval.extras:
    assert 0.0 <= metrics['probe_accuracy_latent'] <= 1.0
    assert metrics['reconstruction_mse'] > 0.0
  if corruption == 'gaussian' and 'denoising' in config.eval.extras:
    # At sigma = 0.5 even a blurry reconstruction beats the noisy input.
    assert (metrics['psnr_denoised_gaussian_0.5']
            > metrics['psnr_noisy_gaussian_0.5'])
  for name in config.eval.figures:
    assert glob.glob(os.path.join(tmp_path, 'images', f'{name}_step*.png'))


def test_same_parameters_on_one_and_eight_devices(tiny_data_dir, tmp_path):
  """A denoising contractive AE (per-example noise and projections) trained
  on 8 fake devices ends with the parameters of the 1-device run."""
  results = multidevice.run_python(f"""
      import json, sys
      import jax, numpy as np
      sys.path.insert(0, 'tests')
      from autoencoder_test import ae_config
      from vaejax import train
      params = {{}}
      for num_devices in (1, 8):
        config = ae_config(
            {tiny_data_dir!r}, 'denoising,contractive,projections=2,runlocal',
            num_devices=num_devices, num_train_steps=6, steps_per_dispatch=3,
            log_every=3, checkpoint_every=6,
            **{{'eval.max_examples': 64, 'eval.extras': (),
                'eval.figures': ()}})
        state = train.train_and_evaluate(
            config, {str(tmp_path)!r} + f'/{{num_devices}}')['state']
        params[num_devices] = [np.asarray(x).tolist()
                               for x in jax.tree.leaves(state['params'])]
      print(json.dumps(params))
      """, num_devices=8)
  for one, eight in zip(results['1'], results['8']):
    # Summation order differs between 1 and 8 devices; a key that depended
    # on the device count would change whole updates (~1e-3), not 1e-6.
    np.testing.assert_allclose(np.asarray(eight), np.asarray(one), rtol=1e-5,
                               atol=1e-5)
