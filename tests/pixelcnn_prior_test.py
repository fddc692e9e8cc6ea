"""The PixelCNN prior over VQ-VAE code grids (vaejax/models/pixelcnn_prior.py,
vaejax/objectives/autoregressive.py, the 'vq_codes' stage and the
'two_stage_bound' evaluation).

(The network's causality, both stacks, is tested in pixelcnn_test.py.)
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from vaejax import errors
from vaejax import models
from vaejax import stages
from vaejax import train
from vaejax.configs import loading
from vaejax.models import pixelcnn_prior
from vaejax.objectives import autoregressive
from vaejax.objectives import likelihoods

NUM_CODES = 5
SMALL_PRIOR = {'model.feature_channels': 8, 'model.num_layers': 2,
               'model.first_kernel_size': 3, 'model.output_features': 16}


def prior_family(grid_shape=(3, 4), arg=''):
  config = loading.load_config(
      f'experiments/pixelcnn_prior.py:workdir=/v{arg}',
      **{'model.num_codes': NUM_CODES, **SMALL_PRIOR})
  return models.build_family(config, grid_shape,
                             likelihoods.get_likelihood(config.objective))


def test_a_prior_with_all_mass_on_one_code_samples_it_everywhere():
  family = prior_family()
  codes = jnp.zeros((2, 3, 4))
  variables = family.model.init(jax.random.key(0), codes)
  output = variables['params']['network']['output']
  output['kernel'] = jnp.zeros_like(output['kernel'])
  output['bias'] = jnp.zeros((NUM_CODES,)).at[2].set(100.0)
  sampled = jax.jit(family.sample_codes, static_argnums=2)(
      variables, jax.random.key(1), 6)
  assert sampled.shape == (6, 3, 4) and sampled.dtype == jnp.int32
  np.testing.assert_array_equal(sampled, 2)
  np.testing.assert_allclose(
      family.code_log_prob(variables, sampled), 0.0, atol=1e-6)


def test_ancestral_sampling_draws_each_position_from_the_codes_before_it():
  """With logits that put all mass on (previous code + 1) mod K (code 1 at
  the first position), the only possible grid counts up in raster order."""
  def logits_fn(codes):
    flat = codes.reshape(codes.shape[0], -1)
    previous = jnp.concatenate([jnp.zeros_like(flat[:, :1]), flat[:, :-1]], 1)
    following = jnp.where(jnp.arange(flat.shape[1]) == 0, 1,
                          (previous + 1) % NUM_CODES)
    return 100.0 * jax.nn.one_hot(following, NUM_CODES).reshape(
        *codes.shape, NUM_CODES)

  sampled = pixelcnn_prior.sample_codes(logits_fn, jax.random.key(0), 2,
                                        (3, 4))
  expected = np.concatenate([[1], (np.arange(1, 12) + 1) % NUM_CODES])
  np.testing.assert_array_equal(sampled, np.tile(expected.reshape(3, 4),
                                                 (2, 1, 1)))


def test_categorical_log_prob_matches_numpy():
  logits = jax.random.normal(jax.random.key(0), (3, 2, 2, NUM_CODES))
  codes = jax.random.randint(jax.random.key(1), (3, 2, 2), 0, NUM_CODES)
  log_p = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64)))
  expected = np.take_along_axis(log_p, np.asarray(codes)[..., None],
                                -1).sum((1, 2, 3))
  np.testing.assert_allclose(
      autoregressive.categorical_log_prob(logits, codes.astype(jnp.float32)),
      expected, rtol=1e-5)


def test_a_prior_without_a_first_stage_says_it_cannot_sample():
  family = prior_family()
  assert 'first stage' in family.lacking('sample')
  assert family.has('code_log_prob')


@pytest.fixture(scope='module')
def stage_one(tiny_data_dir, tmp_path_factory):
  """A runlocal-sized binarised VQ-VAE with EMA codebook on the tiny data."""
  workdir = str(tmp_path_factory.mktemp('vqvae') / 'w')
  config = tiny_config(tiny_data_dir, 'vqvae', 'binarized,ema,runlocal', **{
      'model.channels': (4, 8), 'model.code_dim': 3,
      'model.num_codes': NUM_CODES, 'num_train_steps': 4,
      'steps_per_dispatch': 2, 'eval.max_examples': 64})
  return workdir, train.train_and_evaluate(config, workdir)['metrics']


def test_two_stage_train_evaluate_and_the_bound(tiny_data_dir, stage_one,
                                                tmp_path):
  """The class-conditional prior trains on the VQ-VAE's code grids; its
  bound is the prior's NLL of the test codes plus the VQ-VAE's own
  reconstruction NLL of the same binarised test images; samples decode."""
  workdir, first_metrics = stage_one
  assert 0 < first_metrics['codebook_perplexity'] <= NUM_CODES
  config = tiny_config(
      tiny_data_dir, 'pixelcnn_prior',
      f'workdir={workdir},codes={NUM_CODES},conditional,runlocal',
      **{**SMALL_PRIOR, 'num_train_steps': 4, 'steps_per_dispatch': 2,
         'eval.max_examples': 64})
  result = train.train_and_evaluate(config, str(tmp_path))
  metrics = result['metrics']
  assert metrics['nll_bound'] == pytest.approx(
      metrics['bound_prior_nll'] + metrics['bound_reconstruction_nll'])
  assert metrics['bound_prior_nll'] == pytest.approx(metrics['loss'],
                                                     rel=1e-5)
  assert metrics['bound_reconstruction_nll'] == pytest.approx(
      first_metrics['recon_nll'], rel=1e-4)
  assert metrics['nats_per_code'] == pytest.approx(metrics['loss'] / 49,
                                                   rel=1e-5)
  assert os.path.exists(result['figure_paths']['samples'])
  trained = stages.restore(str(tmp_path))
  codes = trained.exp.dataset.test.images
  assert codes.shape == (64, 7, 7) and codes.dtype == np.int32
  assert 0 <= codes.min() and codes.max() < NUM_CODES
  samples = trained.exp.family.sample(trained.variables, jax.random.key(0), 3)
  assert samples.shape == (3, 28, 28, 1)
  assert float(samples.min()) >= 0.0 and float(samples.max()) <= 1.0


def test_a_prior_with_another_number_of_codes_fails_before_training(
    tiny_data_dir, stage_one, tmp_path):
  config = tiny_config(tiny_data_dir, 'pixelcnn_prior',
                       f'workdir={stage_one[0]},codes=7,runlocal')
  with pytest.raises(errors.ConfigError, match=f'num_codes={NUM_CODES}'):
    train.train_and_evaluate(config, str(tmp_path))
