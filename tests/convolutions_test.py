"""vaejax/models/convolutions.py: convolutions as single matmuls.

Every case is checked against XLA's own convolution (`lax` / flax's
nn.Conv and nn.ConvTranspose): outputs and both gradients.
"""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax import lax

from vaejax import errors
from vaejax.models import autoencoder
from vaejax.models import convolutions
from vaejax.models import vae as vae_models
from vaejax.objectives import likelihoods
from vaejax.configs import common
from vaejax.configs import loading


def _outputs_and_gradients(module, variables, x):
  def loss(variables, x):
    # A nonlinear loss, so that the cotangent differs at every position.
    return jnp.sum(jnp.sin(3.0 * module.apply(variables, x)))
  return module.apply(variables, x), jax.grad(loss, argnums=(0, 1))(
      variables, x)


def _assert_same_numbers(reference, module, input_shape):
  x = jax.random.normal(jax.random.key(1), input_shape)
  variables = reference.init(jax.random.key(0), x)
  # The same parameter tree (names and shapes): checkpoints carry over.
  chex.assert_trees_all_equal_shapes(
      variables, module.init(jax.random.key(0), x))
  expected = jax.jit(lambda v, x: _outputs_and_gradients(reference, v, x))(
      variables, x)
  actual = jax.jit(lambda v, x: _outputs_and_gradients(module, v, x))(
      variables, x)
  # Kernel gradients are sums over batch and positions, in another order:
  # compare each array to within 2e-5 of its own largest magnitude.
  def check(actual, expected):
    scale = max(float(jnp.max(jnp.abs(expected))), 1.0)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=2e-5 * scale)
  chex.assert_trees_all_equal_shapes(actual, expected)
  jax.tree.map(check, actual, expected)


# (features, kernel, strides, input shape): the conv VAE's layers, odd sizes,
# strides larger than the kernel, 1-D and 3-D.
STRIDED = [
    (32, (3, 3), (2, 2), (4, 28, 28, 1)),
    (8, (3, 3), (2, 2), (3, 14, 14, 5)),
    (5, (4, 3), (3, 2), (2, 11, 9, 3)),
    (4, (2, 2), (3, 3), (2, 10, 7, 2)),
    (6, (5,), (2,), (3, 17, 4)),
    (3, (3, 2, 2), (2, 1, 2), (2, 7, 5, 6, 2)),
]


@pytest.mark.parametrize('features, kernel, strides, shape', STRIDED)
def test_strided_conv_matches_nn_conv(features, kernel, strides, shape):
  _assert_same_numbers(
      nn.Conv(features, kernel, strides=strides),
      convolutions.conv(features, kernel, strides, impl='matmul'), shape)


@pytest.mark.parametrize('padding', ['SAME', 'VALID', [(2, 0), (0, 3)]])
def test_unit_stride_conv_matches_nn_conv(padding):
  _assert_same_numbers(
      nn.Conv(3, (3, 2), padding=padding),
      convolutions.conv(3, (3, 2), padding=padding, impl='matmul'),
      (2, 9, 8, 4))


@pytest.mark.parametrize('features, kernel, strides, shape', STRIDED)
def test_conv_transpose_matches_nn_conv_transpose(features, kernel, strides,
                                                  shape):
  _assert_same_numbers(
      nn.ConvTranspose(features, kernel, strides=strides),
      convolutions.conv_transpose(features, kernel, strides, impl='matmul'),
      shape)


def test_conv_transpose_with_lax_impl_is_nn_conv_transpose_exactly():
  x = jax.random.normal(jax.random.key(1), (2, 7, 7, 8))
  reference = nn.ConvTranspose(4, (3, 3), strides=(2, 2))
  variables = reference.init(jax.random.key(0), x)
  module = convolutions.conv_transpose(4, (3, 3), (2, 2), impl='lax')
  np.testing.assert_array_equal(module.apply(variables, x),
                                reference.apply(variables, x))


def test_unsupported_convolutions_fall_back_to_lax():
  """Feature groups and kernel dilation go to lax.conv_general_dilated."""
  x = jax.random.normal(jax.random.key(1), (2, 9, 9, 4))
  kernel = jax.random.normal(jax.random.key(2), (3, 3, 2, 6))
  numbers = lax.conv_dimension_numbers(x.shape, kernel.shape,
                                       ('NHWC', 'HWIO', 'NHWC'))
  for kwargs in (dict(feature_group_count=2, window_strides=(2, 2)),
                 dict(feature_group_count=2, rhs_dilation=(2, 2),
                      window_strides=(1, 1))):
    strides = kwargs.pop('window_strides')
    np.testing.assert_array_equal(
        convolutions.matmul_conv_general_dilated(
            x, kernel, strides, 'SAME', dimension_numbers=numbers, **kwargs),
        lax.conv_general_dilated(
            x, kernel, strides, 'SAME', dimension_numbers=numbers, **kwargs))


@pytest.mark.parametrize('kernel_size, strides, padding, shape', [
    ((3, 3), (2, 2), ((1, 1), (1, 1)), (2, 7, 8, 3)),
    ((4, 2), (3, 1), ((2, 0), (0, 3)), (2, 10, 5, 2)),
    ((2,), (3,), ((0, 1),), (3, 11, 4)),
])
def test_scatter_is_the_transpose_of_gather(kernel_size, strides, padding,
                                            shape):
  """<gather(x), p> = <x, scatter(p)> for random x and p: the identity that
  makes each reverse-mode step of a convolution a matmul."""
  x = jax.random.normal(jax.random.key(0), shape)
  gathered = convolutions._gather_taps(x, kernel_size, strides, padding)
  p = jax.random.normal(jax.random.key(1), gathered.shape)
  scattered = convolutions._scatter_taps(p, kernel_size, strides, padding,
                                         shape[1:-1])
  assert scattered.shape == x.shape
  np.testing.assert_allclose(jnp.vdot(gathered, p), jnp.vdot(x, scattered),
                             rtol=1e-5)
  # Every input value is gathered once per tap whose window covers it.
  ones = convolutions._scatter_taps(
      convolutions._gather_taps(jnp.ones(shape), kernel_size, strides,
                                padding), kernel_size, strides, padding,
      shape[1:-1])
  assert float(ones.max()) <= np.prod(kernel_size)


def _conv_config(impl):
  config = ml_collections.ConfigDict(
      loading.load_config('experiments/vae.py').model.to_dict())
  config.update(dict(channels=(4, 8), latent_dim=3, hidden_size=16,
                     conv_impl=impl))
  config.code_dim = 3
  config.code_activation = 'linear'
  return config


@pytest.mark.parametrize('family', ['vae', 'autoencoder'])
def test_conv_models_give_the_same_numbers_with_either_impl(family):
  likelihood = likelihoods.get_likelihood(
      ml_collections.ConfigDict(common.likelihood('bernoulli')))
  build = (vae_models.conv_vae if family == 'vae'
           else autoencoder.conv_autoencoder)
  lax_model, fast_model = (
      build(_conv_config(impl), (8, 12, 3), likelihood).model
      for impl in ('lax', 'matmul'))
  _assert_same_numbers(lax_model, fast_model, (4, 8, 12, 3))


def test_unknown_conv_impl_is_a_config_error():
  likelihood = likelihoods.get_likelihood(
      ml_collections.ConfigDict(common.likelihood('bernoulli')))
  with pytest.raises(errors.ConfigError, match='conv_impl.*matmul'):
    vae_models.conv_vae(_conv_config('cudnn'), (8, 8, 1), likelihood)


def test_auto_picks_matmul_on_cpu_only():
  expected = 'matmul' if jax.default_backend() == 'cpu' else 'lax'
  assert convolutions.resolve_conv_impl('auto') == expected
  assert convolutions.resolve_conv_impl('lax') == 'lax'
  # The earlier rewrite's name, in saved configs, runs the matmul one.
  assert convolutions.resolve_conv_impl('polyphase') == 'matmul'


def test_forward_mode_matches_nn_conv_transpose():
  """jvp (used by the contractive penalty) through the custom rule."""
  x = jax.random.normal(jax.random.key(1), (2, 5, 6, 4))
  reference = nn.ConvTranspose(3, (3, 3), strides=(2, 2))
  module = convolutions.conv_transpose(3, (3, 3), (2, 2), impl='matmul')
  variables = reference.init(jax.random.key(0), x)
  tangents = jax.tree.map(lambda a: jnp.cos(a) + 0.5, (variables, x))
  expected = jax.jvp(reference.apply, (variables, x), tangents)
  actual = jax.jvp(module.apply, (variables, x), tangents)
  chex.assert_trees_all_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_jacfwd_through_a_strided_conv_matches_nn_conv():
  """jacfwd (vmap of jvp, the contractive penalty's exact Jacobian)."""
  x = jax.random.normal(jax.random.key(1), (1, 6, 6, 2))
  reference = nn.Conv(3, (3, 3), strides=(2, 2))
  module = convolutions.conv(3, (3, 3), (2, 2), impl='matmul')
  variables = reference.init(jax.random.key(0), x)
  chex.assert_trees_all_close(
      jax.jacfwd(module.apply, argnums=1)(variables, x),
      jax.jacfwd(reference.apply, argnums=1)(variables, x),
      rtol=1e-5, atol=1e-5)
