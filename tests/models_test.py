"""Tests for vaejax.models: VAE networks, their shapes and the model registry.

Shapes and parameter counts come from jax.eval_shape (no compilation); the
numerical checks run small networks against a numpy forward pass.
"""

import importlib.util
import math
import pathlib
import re

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vaejax import models
from vaejax.models import vae as vae_models
from vaejax.objectives import likelihoods
from vaejax.configs import common
from vaejax.configs import loading

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / 'experiments'


def vae_experiment_config(arg='runlocal'):
  """`get_config(arg)` of experiments/vae.py, loaded as main.py loads it."""
  spec = importlib.util.spec_from_file_location(
      'experiment_vae', EXPERIMENTS / 'vae.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def get_likelihood(name):
  return likelihoods.get_likelihood(ml_collections.ConfigDict(
      common.likelihood(name)))

def vae_model_config(**fields):
  """The model block of experiments/vae.py with `fields` changed."""
  config = ml_collections.ConfigDict(
      loading.load_config('experiments/vae.py').model.to_dict())
  config.update(fields)
  return config



def random_variables(model, x, seed=0):
  """Normal kernels (LeCun scale) and small biases, drawn with numpy."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)

  def draw(shape):
    fan_in = math.prod(shape.shape[:-1]) if len(shape.shape) > 1 else 10
    return jnp.asarray(rng.normal(size=shape.shape) / math.sqrt(fan_in),
                       jnp.float32)
  return jax.tree.map(draw, shapes)


def num_parameters(tree):
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize('image_shape', [(28, 28, 1), (32, 32, 3)])
@pytest.mark.parametrize('likelihood_name, num_params',
                         [('bernoulli', 1), ('gaussian_learned', 2)])
@pytest.mark.parametrize('model_name', ['mlp_vae', 'conv_vae'])
def test_output_shapes(model_name, likelihood_name, num_params, image_shape):
  config = vae_experiment_config()
  config.model.name = model_name
  likelihood = get_likelihood(likelihood_name)
  assert likelihood.num_params == num_params
  model = models.build_family(config, image_shape, likelihood).model
  batch, latent_dim = 3, config.model.latent_dim
  x = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
  z = jax.ShapeDtypeStruct((batch, latent_dim), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  height, width, channels = image_shape
  params_shape = (batch, height, width, channels * num_params)

  mean, logvar = jax.eval_shape(
      lambda v, x: model.apply(v, x, method=model.encode), variables, x)
  chex.assert_shape([mean, logvar], (batch, latent_dim))
  chex.assert_shape(jax.eval_shape(
      lambda v, z: model.apply(v, z, method=model.decode), variables, z),
                    params_shape)
  chex.assert_shape(jax.eval_shape(model.apply, variables, x), params_shape)


def test_mlp_vae_parameter_count():
  config = vae_experiment_config('mnist')
  assert (config.model.name, tuple(config.model.hidden_sizes),
          config.model.latent_dim) == ('mlp_vae', (400,), 20)
  model = models.build_family(config, (28, 28, 1), get_likelihood('bernoulli')).model
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros((1, 28, 28, 1)))
  assert num_parameters(variables) == (
      784 * 400 + 400 + 2 * (400 * 20 + 20) + 20 * 400 + 400 + 400 * 784
      + 784) == 652_824
  encoder = variables['params']['encoder']
  chex.assert_shape(encoder['hidden_0']['kernel'], (784, 400))
  chex.assert_shape([encoder['mean']['kernel'], encoder['logvar']['kernel']],
                    (400, 20))
  decoder = variables['params']['decoder']
  chex.assert_shape(decoder['hidden_0']['kernel'], (20, 400))
  chex.assert_shape(decoder['output']['kernel'], (400, 784))


def test_mlp_vae_matches_a_numpy_forward_pass():
  image_shape, num_params = (4, 4, 2), 2
  model = vae_models.mlp_vae(
      vae_model_config(hidden_sizes=(8, 6), latent_dim=3),
      image_shape, get_likelihood('gaussian_learned')).model
  x = np.random.default_rng(1).uniform(size=(5, *image_shape))
  x = x.astype(np.float32)
  variables = random_variables(model, x)

  @jax.jit
  def forward(variables, x):
    mean, logvar = model.apply(variables, x, method=model.encode)
    return mean, logvar, model.apply(variables, mean, method=model.decode), (
        model.apply(variables, x))

  mean, logvar, decoded, reconstruction = forward(variables, x)

  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables['params'])
  dense = lambda layer, h: h @ layer['kernel'] + layer['bias']
  relu = lambda h: np.maximum(h, 0.0)
  h = x.reshape(5, -1).astype(np.float64)
  h = relu(dense(p['encoder']['hidden_1'], relu(dense(
      p['encoder']['hidden_0'], h))))
  chex.assert_trees_all_close(mean, dense(p['encoder']['mean'], h),
                              rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(logvar, dense(p['encoder']['logvar'], h),
                              rtol=1e-5, atol=1e-6)
  # The decoder mirrors the hidden sizes: 3 -> 6 -> 8 -> 4 * 4 * 2 * 2.
  chex.assert_shape(p['decoder']['hidden_0']['kernel'], (3, 6))
  h = relu(dense(p['decoder']['hidden_1'], relu(dense(
      p['decoder']['hidden_0'], np.asarray(mean, np.float64)))))
  expected = dense(p['decoder']['output'], h).reshape(
      5, 4, 4, 2 * num_params)
  chex.assert_trees_all_close(decoded, expected, rtol=1e-5, atol=1e-6)
  # __call__ decodes the posterior mean.
  chex.assert_trees_all_close(reconstruction, decoded)


def test_conv_vae_numbers():
  """Finite outputs, __call__ = decode(mean), examples processed separately."""
  config = vae_model_config(channels=(4, 8), latent_dim=3, hidden_size=16)
  model = vae_models.conv_vae(config, (8, 12, 3),
                              get_likelihood('bernoulli')).model
  x = np.random.default_rng(2).uniform(size=(4, 8, 12, 3)).astype(np.float32)
  variables = random_variables(model, x)

  @jax.jit
  def forward(variables, x):
    mean, logvar = model.apply(variables, x, method=model.encode)
    single_mean, _ = model.apply(variables, x[1:2], method=model.encode)
    return (mean, logvar, single_mean,
            model.apply(variables, mean, method=model.decode),
            model.apply(variables, x))

  mean, logvar, single_mean, decoded, reconstruction = forward(variables, x)
  chex.assert_tree_all_finite([mean, logvar, decoded])
  chex.assert_shape([mean, logvar], (4, 3))
  chex.assert_shape(decoded, (4, 8, 12, 3))
  chex.assert_trees_all_close(reconstruction, decoded)
  chex.assert_trees_all_close(single_mean, mean[1:2], rtol=1e-5, atol=1e-6)
  assert float(jnp.std(decoded)) > 0.0
  assert not np.allclose(mean[0], mean[1])


def test_conv_vae_rejects_indivisible_image_shapes():
  config = vae_model_config(channels=(32, 64), latent_dim=2)
  with pytest.raises(ValueError, match=re.escape('(30, 30, 1)')) as error:
    vae_models.conv_vae(config, (30, 30, 1), get_likelihood('bernoulli'))
  assert 'divisible by 4' in str(error.value)
  with pytest.raises(ValueError, match=re.escape('(32, 36, 3)')):
    vae_models.conv_vae(vae_model_config(
        channels=(8, 8, 8), latent_dim=2), (32, 36, 3),
                        get_likelihood('bernoulli'))
  # Divisible shapes are accepted.
  vae_models.conv_vae(config, (28, 28, 1), get_likelihood('bernoulli'))


def test_build_model_rejects_a_different_image_shape():
  config = vae_experiment_config()
  config.model.image_shape = (32, 32, 3)
  with pytest.raises(ValueError) as error:
    models.build_family(config, (28, 28, 1), get_likelihood('bernoulli')).model
  message = str(error.value)
  assert '(32, 32, 3)' in message and '(28, 28, 1)' in message
  # The same shape, as a list or tuple, passes.
  config.model.image_shape = (28, 28, 1)
  assert isinstance(models.build_family(config, [28, 28, 1],
                                       get_likelihood('bernoulli')).model,
                    vae_models.VAE)


def test_unknown_model_lists_known_names():
  config = vae_experiment_config()
  config.model.name = 'nope'
  with pytest.raises(KeyError) as error:
    models.build_family(config, (28, 28, 1), get_likelihood('bernoulli')).model
  message = str(error.value)
  assert "'nope'" in message
  assert {'conv_vae', 'mlp_vae'} <= set(models.MODELS.names())
  for name in models.MODELS.names():
    assert name in message
