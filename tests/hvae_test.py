"""Top-down hierarchical VAEs (models/hvae.py, objectives/hvae.py): shapes
and KL per group, the IWAE estimate against the ELBO, against k and against
the exact log p(x) of a linear-Gaussian hierarchy, sampling, and 1 vs 8
devices."""
import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import tiny_config
from multidevice import run_python
from reliability_test import train_scalars
from vaejax import train
from vaejax.models import hvae
from vaejax.objectives import hvae as hvae_objectives
from vaejax.objectives import likelihoods


def likelihood_config(name='bernoulli', scale=0.1):
  return ml_collections.ConfigDict(dict(
      likelihood=name, likelihood_scale=scale, min_log_scale=-7.0,
      beta=1.0, kl_warmup_steps=0, free_bits=0.0, num_samples=1))


def mlp_family(latent_dims=(3, 2), hidden=(16,), gated=True,
               logvar_range=(-6.0, 2.0), image_shape=(4, 4, 1),
               likelihood=None):
  config = ml_collections.ConfigDict(dict(
      hidden_sizes=hidden, latent_dims=latent_dims, gated=gated,
      logvar_range=logvar_range, dtype='float32'))
  likelihood = likelihood or likelihoods.get_likelihood(likelihood_config())
  return hvae.mlp_hvae(config, image_shape, likelihood)


def conv_family():
  config = ml_collections.ConfigDict(dict(
      width=8, bottleneck=4, latent_channels=2, groups_per_scale=(1, 1),
      logvar_range=(-6.0, 2.0), dtype='float32', conv_impl='auto'))
  return hvae.conv_hvae(config, (8, 8, 1),
                        likelihoods.get_likelihood(likelihood_config()))


def binary_images(shape, seed=0):
  return jax.random.bernoulli(jax.random.key(seed), 0.4, shape).astype(
      jnp.float32)


def keys_for(num, seed=1):
  return jax.random.split(jax.random.key(seed), num)


def init(family, x):
  return family.model.init(jax.random.key(0), x)


def posterior(family, variables, x, keys):
  return family.model.apply(variables, x, keys, method=family.model.posterior)


def log_weights(family, variables, x, keys, k):
  return jax.jit(lambda v, x, keys: hvae_objectives.log_importance_weights(
      family.model, v, family.likelihood, x, keys, k))(variables, x, keys)


def objective(config, family, variables, x, keys, step):
  loss_fn = hvae_objectives.make_hvae_elbo(config)
  return jax.jit(lambda v, x, keys: loss_fn(
      family.model, v, {'inputs': x}, keys, step, True))(variables, x, keys)


def zero_posteriors(params, output_layer):
  """The posterior heads' last layers zeroed: q copies the prior."""
  params = jax.tree.map(lambda a: a, params)
  for name, head in params['top_down'].items():
    if name.endswith('_posterior'):
      head[output_layer] = jax.tree.map(jnp.zeros_like, head[output_layer])
  return params


@pytest.mark.parametrize('make, x_shape, z_shapes, output_layer', [
    (mlp_family, (5, 4, 4, 1), [(5, 3), (5, 2)], 'output'),
    (conv_family, (5, 8, 8, 1), [(5, 2, 2, 2), (5, 4, 4, 2)],
     'conv_out'),
])
def test_shapes_and_kl_per_group(make, x_shape, z_shapes, output_layer):
  family = make()
  x = binary_images(x_shape)
  variables = init(family, x)
  params, groups = posterior(family, variables, x, keys_for(5))
  chex.assert_shape(params, x_shape)
  assert [g['z'].shape for g in groups] == z_shapes
  for group, shape in zip(groups, z_shapes):
    for name in ('prior_mean', 'prior_logvar', 'delta_mean', 'delta_logvar'):
      chex.assert_shape(group[name], shape)
    kl = hvae_objectives.group_kl(group)
    assert float(kl.min()) >= 0 and float(kl.max()) > 0
  # q = p: every group's KL and log density ratio are exactly zero.
  copied = {'params': zero_posteriors(variables['params'], output_layer)}
  _, groups = posterior(family, copied, x, keys_for(5))
  for group in groups:
    np.testing.assert_array_equal(hvae_objectives.group_kl(group), 0.0)
    np.testing.assert_allclose(hvae_objectives.group_log_ratio(group), 0.0,
                               atol=1e-4)


def test_objective_reports_each_groups_kl_and_warms_up():
  family = mlp_family()
  x = binary_images((6, 4, 4, 1))
  variables = init(family, x)
  config = likelihood_config()
  config.kl_warmup_steps = 10
  loss, metrics, _ = objective(config, family, variables, x, keys_for(6), 5)
  np.testing.assert_allclose(metrics['kl'],
                             metrics['kl_group_0'] + metrics['kl_group_1'],
                             rtol=1e-6)
  assert float(metrics['kl_group_0'].min()) > 0
  np.testing.assert_allclose(metrics['kl_weight'], 0.5)
  np.testing.assert_allclose(
      loss, metrics['reconstruction_nll'] + 0.5 * metrics['kl'], rtol=1e-6)
  np.testing.assert_allclose(
      metrics['elbo'], -metrics['reconstruction_nll'] - metrics['kl'],
      rtol=1e-6)
  # Free bits raise every element's KL to at least the floor.
  config.free_bits = 5.0
  floored, _, _ = objective(config, family, variables, x, keys_for(6), 10)
  np.testing.assert_array_less(
      metrics['reconstruction_nll'] + 5.0 * 5, floored + 1e-3)


def test_iwae_with_one_sample_is_the_elbo_in_expectation_and_grows_with_k():
  family = mlp_family()
  x = binary_images((16, 4, 4, 1))
  variables = init(family, x)
  samples = 1024
  log_w = log_weights(family, variables, x, keys_for(16), samples)
  config = likelihood_config()
  config.num_samples = samples
  _, metrics, _ = objective(config, family, variables, x,
                            keys_for(16, seed=2), 0)
  # E[L_1] = E[log w] = the ELBO (whose KL is in closed form).
  standard_error = float(jnp.std(log_w)) / math.sqrt(log_w.size)
  assert abs(float(jnp.mean(log_w)) - float(jnp.mean(metrics['elbo']))) < (
      4 * standard_error + 4 * float(jnp.std(metrics['elbo'])) / samples)
  # E[L_k] averaged over disjoint sets of k samples rises with k.
  bounds = [float(jnp.mean(hvae_objectives.vae_objectives.iwae_bound(
      log_w.reshape(16, samples // k, k)))) for k in (1, 4, 16, 64)]
  assert all(a < b for a, b in zip(bounds, bounds[1:])), bounds
  # The chunked estimate is L_k of its samples: between L_1 and log p(x).
  chunked = family.log_likelihood_bound(variables, x, keys_for(16), 64, 16)
  assert float(jnp.mean(chunked)) > bounds[0]


def linear_head(weight, bias, hidden, big=100.0):
  """MLPHead (ReLU) parameters computing x @ weight + bias exactly: the
  hidden layer copies x shifted by `big`, so ReLU stays linear."""
  weight = np.asarray(weight, np.float32)
  n_in, out = weight.shape
  kernel = np.zeros((n_in, hidden), np.float32)
  kernel[:, :n_in] = np.eye(n_in)
  output = np.zeros((hidden, out), np.float32)
  output[:n_in] = weight
  return {'hidden_0': {'kernel': kernel,
                       'bias': np.full(hidden, big, np.float32)},
          'output': {'kernel': output,
                     'bias': np.asarray(bias, np.float32)
                     - big * output.sum(0)}}


def constant_head(n_in, hidden, bias):
  """MLPHead parameters whose output is `bias` whatever the input."""
  bias = np.asarray(bias, np.float32)
  return {'hidden_0': {'kernel': np.zeros((n_in, hidden), np.float32),
                       'bias': np.zeros(hidden, np.float32)},
          'output': {'kernel': np.zeros((hidden, bias.size), np.float32),
                     'bias': bias}}


def test_iwae_estimates_the_exact_log_likelihood_of_a_linear_gaussian_hvae():
  """z_1 ~ N(0, 1), z_2 | z_1 ~ N(b z_1, s^2), x | z ~ N(C [z_1, z_2],
  sigma^2 I): x ~ N(0, C Sigma_z C^T + sigma^2 I). The posteriors are the
  priors shifted by constant residuals (a valid, imperfect proposal)."""
  b, s, sigma = 0.8, 0.6, 0.7
  c = np.array([[1.0, 0.5], [-0.3, 1.2]])
  width = 4
  likelihood = likelihoods.get_likelihood(likelihood_config('gaussian', sigma))
  family = mlp_family(latent_dims=(1, 1), hidden=(width,), gated=False,
                      logvar_range=None, image_shape=(1, 2, 1),
                      likelihood=likelihood)
  x = jnp.array([[0.5, -1.0], [2.0, 1.0], [-1.5, 0.3]]).reshape(3, 1, 2, 1)
  variables = init(family, x)
  params = jax.tree.map(np.asarray, variables['params'])
  top_down = params['top_down']
  top_down['initial_state'] = np.zeros(width, np.float32)
  top_down['group_0_prior'] = constant_head(width, width, [0.0, 0.0])
  prior_1 = np.zeros((width, 2))
  prior_1[0, 0] = b
  top_down['group_1_prior'] = linear_head(prior_1, [0.0, math.log(s * s)],
                                          width)
  for l in range(2):
    embed = np.zeros((1, width))
    embed[0, l] = 1.0
    top_down[f'group_{l}_embed'] = linear_head(embed, np.zeros(width), width)
    top_down[f'group_{l}_residual'] = constant_head(width, width,
                                                    np.zeros(width))
    top_down[f'group_{l}_posterior'] = constant_head(2 * width, width,
                                                     [0.1, -0.3])
  decoder = np.zeros((width, 2))
  decoder[:2] = c.T
  params['decoder'] = linear_head(decoder, [0.0, 0.0], width)
  variables = {'params': params}

  sigma_z = np.array([[1.0, b], [b, b * b + s * s]])
  covariance = c @ sigma_z @ c.T + sigma ** 2 * np.eye(2)
  points = np.asarray(x).reshape(3, 2)
  exact = -0.5 * (2 * math.log(2 * math.pi)
                  + np.log(np.linalg.det(covariance))
                  + np.einsum('bi,ij,bj->b', points,
                              np.linalg.inv(covariance), points))

  k = 5000
  keys = keys_for(3, seed=7)
  estimate = family.log_likelihood_bound(variables, x, keys, k, 500)
  log_w = np.asarray(log_weights(family, variables, x, keys, k), np.float64)
  w = np.exp(log_w - log_w.max(-1, keepdims=True))
  standard_error = w.std(-1) / w.mean(-1) / math.sqrt(k)
  assert standard_error.max() < 0.03
  np.testing.assert_array_less(np.abs(np.asarray(estimate) - exact),
                               4 * standard_error + 2e-3)
  # A single sample is a strictly looser bound here (q is not the posterior).
  assert np.mean(log_w) < np.mean(exact) - 0.05


@pytest.mark.parametrize('make, shape, top_dim', [
    (mlp_family, (4, 4, 1), 3), (conv_family, (8, 8, 1), 2 * 2 * 2)])
def test_samples_are_finite_images_from_the_prior(make, shape, top_dim):
  family = make()
  variables = init(family, binary_images((2, *shape)))
  sample = jax.jit(lambda v, key: family.sample(v, key, 6))
  images = sample(variables, jax.random.key(3))
  chex.assert_shape(images, (6, *shape))
  chex.assert_tree_all_finite(images)
  assert float(images.min()) >= 0 and float(images.max()) <= 1
  # The same keys give the same samples; a new key others.
  np.testing.assert_array_equal(images, sample(variables, jax.random.key(3)))
  assert not np.allclose(images, sample(variables, jax.random.key(4)))
  # represent: the top group's posterior mean, flattened.
  chex.assert_shape(family.represent(variables, binary_images((3, *shape))),
                    (3, top_dim))


DEVICES_SCRIPT = '''
import json, sys
import jax, numpy as np
sys.path.insert(0, 'tests')
from conftest import tiny_config
from vaejax import train
results = {{}}
for num_devices in (1, 8):
  config = tiny_config({data_dir!r}, experiment='hvae', arg='runlocal',
                       num_devices=num_devices, num_train_steps=2,
                       steps_per_dispatch=2, log_every=2, checkpoint_every=2,
                       **{{'eval.max_examples': 64, 'eval.extras': ('iwae',),
                       'eval.figures': (), 'eval.iwae_samples': 10,
                       'eval.iwae_chunk': 5,
                       'optimizer.name': 'sgd',
                       'optimizer.learning_rate': 1e-4}})
  out = train.train_and_evaluate(config, {workdir!r} + f'/{{num_devices}}')
  params = [np.asarray(x).tolist()
            for x in jax.tree.leaves(out['state']['params'])]
  results[num_devices] = {{'params': params, 'metrics': out['metrics']}}
print(json.dumps(results))
'''


def test_runlocal_trains_and_evaluates_alike_on_1_and_8_devices(
    tiny_data_dir, tmp_path):
  results = run_python(DEVICES_SCRIPT.format(
      data_dir=tiny_data_dir, workdir=str(tmp_path)), num_devices=8)
  one, eight = results['1'], results['8']
  for a, b in zip(one['params'], eight['params']):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-6)
  for name in ('nll_elbo', 'nll_iwae', 'kl_group_0', 'kl_group_1'):
    assert np.isfinite(one['metrics'][name]), name
    np.testing.assert_allclose(one['metrics'][name], eight['metrics'][name],
                               rtol=1e-5, err_msg=name)
  assert one['metrics']['nll_iwae'] <= one['metrics']['nll_elbo'] + 1e-3


def test_the_conv_experiment_learns_with_no_update_skipped(tiny_data_dir,
                                                           tmp_path):
  # experiments/hvae.py:conv once trained 1,000 steps with its parameters
  # frozen: under a 100-epoch KL warm-up its KL grew to thousands of nats
  # and every gradient norm went above the skip threshold. Its -ELBO (the
  # unweighted bound, whatever the warm-up) must fall, with nothing skipped.
  config = tiny_config(tiny_data_dir, 'hvae', 'conv,runlocal', **{
      'num_train_steps': 60, 'log_every': 20, 'steps_per_dispatch': 20,
      'checkpoint_every': 0, 'eval.extras': (), 'eval.figures': ()})
  train.train_and_evaluate(config, str(tmp_path))
  scalars = train_scalars(str(tmp_path))
  assert [value for _, value in scalars['train/skipped_updates']] == [0] * 3
  neg_elbo = [-value for _, value in scalars['train/elbo']]
  assert neg_elbo[2] < neg_elbo[0] - 20, neg_elbo
