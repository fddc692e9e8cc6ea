"""The discretised logistic mixture (objectives/logistic_mixture.py): a
distribution over the 256 values of a pixel (over every RGB triple on a
coarser grid), PixelCNN++'s formula in float64, its image means, and
hvae.py:cifar10 on a small generated 8-bit data set through TFDS."""
import itertools
import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.special

from objectives_test import discretized_logistic_reference
from own_data_test import prepare_tfds
from vaejax import errors
from vaejax import train
from vaejax.configs import loading
from vaejax.objectives import likelihoods
from vaejax.objectives import logistic_mixture


def mixture(num_mixtures, min_log_scale=-7.0):
  return likelihoods.get_likelihood(ml_collections.ConfigDict(dict(
      likelihood='logistic_mixture', likelihood_scale=0.1,
      min_log_scale=min_log_scale, num_mixtures=num_mixtures)))


def all_values(channels, num_bins):
  """Every pixel value [num_bins ** channels, 1, 1, C] in [0, 1]."""
  values = np.arange(num_bins) / (num_bins - 1)
  grid = np.array(list(itertools.product(values, repeat=channels)))
  return jnp.asarray(grid, jnp.float32)[:, None, None, :]


@pytest.mark.parametrize('channels, num_bins, num_mixtures, spread', [
    (1, 256, 5, 1.0),
    (1, 256, 10, 4.0),   # Very small and very large scales, far locations.
    (3, 8, 3, 1.0),      # Every RGB triple of an 8-level grid.
    (3, 8, 2, 3.0),
    (2, 16, 4, 2.0),
])
def test_mass_over_every_value_is_one(channels, num_bins, num_mixtures,
                                      spread):
  size = logistic_mixture.params_per_pixel(channels, num_mixtures)
  for seed in range(3):
    params = spread * jax.random.normal(jax.random.key(seed), (size,))
    x = all_values(channels, num_bins)
    log_p = logistic_mixture.log_prob_per_pixel(
        jnp.broadcast_to(params, (len(x), 1, 1, size)), x, num_mixtures,
        -7.0, num_bins)
    assert np.all(np.isfinite(log_p))
    np.testing.assert_allclose(float(jnp.exp(jax.nn.logsumexp(log_p))), 1.0,
                               rtol=2e-5)


def reference_log_prob(params, x, num_mixtures, min_log_scale=-7.0):
  """PixelCNN++'s RGB formula for one pixel, in float64 with SciPy, written
  out channel by channel: mu_g += c0 * x_r, mu_b += c1 * x_r + c2 * x_g."""
  params = np.asarray(params, np.float64)
  m = num_mixtures
  logits = params[:m]
  locs = params[m:4 * m].reshape(3, m)
  log_scales = np.maximum(params[4 * m:7 * m].reshape(3, m), min_log_scale)
  c = np.tanh(params[7 * m:10 * m].reshape(3, m))
  r, g, b = 2 * np.asarray(x, np.float64) - 1
  coupled = [locs[0], locs[1] + c[0] * r, locs[2] + c[1] * r + c[2] * g]
  log_components = scipy.special.log_softmax(logits)
  for channel in range(3):
    log_components = log_components + discretized_logistic_reference(
        x[channel], (coupled[channel] + 1) / 2, np.exp(log_scales[channel]))
  return scipy.special.logsumexp(log_components)


def test_rgb_matches_the_pixelcnnpp_formula_in_float64():
  num_mixtures = 4
  likelihood = mixture(num_mixtures)
  rng = np.random.default_rng(0)
  params = rng.normal(size=(2, 3, 3, 10 * num_mixtures)).astype(np.float32)
  x = (rng.integers(0, 256, size=(2, 3, 3, 3)) / 255).astype(np.float32)
  x[0, 0, 0] = (0.0, 1.0, 0.0)  # Edge bins take the tails.
  got = logistic_mixture.log_prob_per_pixel(
      jnp.asarray(params), jnp.asarray(x), num_mixtures, -7.0)
  expected = np.array([
      reference_log_prob(params[i, h, w], x[i, h, w], num_mixtures)
      for i, h, w in np.ndindex(2, 3, 3)]).reshape(2, 3, 3)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
  # log_prob sums the pixels of each example; likelihood.output_channels
  # is what the decoder must emit.
  np.testing.assert_allclose(likelihood.log_prob(params, x),
                             expected.sum(axis=(1, 2)), rtol=1e-4)
  assert likelihood.output_channels(3) == 10 * num_mixtures
  assert likelihood.output_channels(1) == 3 * num_mixtures
  assert likelihood.discrete


def test_one_grey_component_is_the_discretized_logistic():
  rng = np.random.default_rng(1)
  logit, loc, log_scale = rng.normal(size=(3, 5, 6)).astype(np.float32)
  x = (rng.integers(0, 256, size=(5, 6)) / 255).astype(np.float32)
  params = np.stack([logit, loc, log_scale], axis=-1)
  got = logistic_mixture.log_prob_per_pixel(params, x[..., None], 1, -7.0)
  expected = likelihoods.log_likelihood_discretized_logistic(
      x, (loc + 1) / 2, log_scale)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_mean_image_couples_channels_to_the_previous_means():
  num_mixtures = 2
  # Component 0 carries all the weight.
  logits = np.array([30.0, 0.0])
  locs = np.array([[0.2, -0.9], [-0.5, 0.9], [1.4, 0.0]])  # B clips to 1.
  log_scales = np.zeros((3, 2))
  pre = np.array([[0.5, 0.0], [1.0, 0.0], [-1.0, 0.0]])  # atanh of c.
  params = np.concatenate([logits, locs.ravel(), log_scales.ravel(),
                           pre.ravel()]).astype(np.float32)
  mean = np.asarray(mixture(num_mixtures).mean(params[None, None, None]))
  c = np.tanh(pre[:, 0])
  r = 0.2
  g = -0.5 + c[0] * r
  b = min(1.0, 1.4 + c[1] * r + c[2] * g)
  np.testing.assert_allclose(mean[0, 0, 0], (np.array([r, g, b]) + 1) / 2,
                             rtol=1e-5)
  assert mean.shape == (1, 1, 1, 3)


def test_wrong_channel_count_says_what_the_decoder_must_emit():
  with pytest.raises(errors.ConfigError, match='needs 30 decoder channels'):
    logistic_mixture.log_prob_per_pixel(jnp.zeros((2, 2, 29)),
                                        jnp.zeros((2, 2, 3)), 3, -7.0)


def test_hvae_cifar10_runs_on_generated_8bit_data_through_tfds(tmp_path):
  rng = np.random.default_rng(0)
  # Smooth colour gradients with noise: 8-bit RGB 32x32, like CIFAR-10.
  def images(n):
    base = rng.integers(0, 256, size=(n, 1, 1, 3))
    ramp = np.linspace(-40, 40, 32)[None, :, None, None]
    noise = rng.normal(0, 10, size=(n, 32, 32, 3))
    return np.clip(base + ramp + noise, 0, 255).astype(np.uint8)
  splits = {'train': (images(96), np.arange(96) % 10),
            'test': (images(32), np.arange(32) % 10)}
  tfds_dir = prepare_tfds(tmp_path / 'tfds', 'cifar10', splits,
                          class_names=[f'c{i}' for i in range(10)])
  config = loading.load_config(
      'experiments/hvae.py:cifar10,runlocal',
      **{'data.tfds_data_dir': str(tfds_dir), 'model.width': 8,
         'model.bottleneck': 4, 'model.latent_channels': 2,
         'model.groups_per_scale': (1, 1), 'objective.num_mixtures': 3,
         'batch_size': 16, 'num_train_steps': 4, 'steps_per_dispatch': 2,
         'eval.batch_size': 16, 'eval.iwae_batch_size': 16,
         'eval.iwae_samples': 4, 'eval.iwae_chunk': 2,
         'eval.extras': ('iwae',), 'eval.figures': ('samples',)})
  assert config.data.name == 'cifar10'
  workdir = tmp_path / 'w'
  result = train.train_and_evaluate(config, str(workdir))
  metrics = result['metrics']
  dims = 32 * 32 * 3
  for name in ('elbo', 'iwae'):
    nats = metrics[f'nll_{name}']
    assert 0 < nats < dims * math.log(256) * 1.5
    np.testing.assert_allclose(metrics[f'bits_per_dim_{name}'],
                               nats / (dims * math.log(2)), rtol=1e-6)
  with open(workdir / 'eval' / 'metrics.json') as f:
    assert json.load(f)['bits_per_dim_iwae'] == pytest.approx(
        metrics['bits_per_dim_iwae'])
  assert list((workdir / 'images').glob('samples_*.png'))
