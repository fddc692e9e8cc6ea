"""Gaussian mixtures fitted by EM through the one train loop (vaejax/objectives/mixture.py)."""
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from vaejax import data
from vaejax import errors
from vaejax import evaluators
from vaejax import experiment
from vaejax import prng
from vaejax import stages
from vaejax import train
from vaejax.analysis import gmm
from vaejax.analysis import mixture_classifier
from vaejax.configs import loading
from vaejax.data import pipeline
from conftest import tiny_config
from em_test import clusters_with_own_boundaries
import multidevice

MEANS = np.array([[0.0, 0.0, 0.0], [1.5, 0.5, 0.0], [0.0, 1.5, 1.0]])
CHOLESKY_FACTORS = np.linalg.cholesky(np.array([
    np.eye(3), np.diag([0.5, 1.5, 1.0]),
    [[1.0, 0.5, 0.2], [0.5, 1.0, 0.0], [0.2, 0.0, 1.0]]]))


def overlapping_mixture(seed, num_examples):
  """Three overlapping 3-D Gaussians (EM needs many iterations); labels are
  the components."""
  rng = np.random.default_rng(seed)
  labels = rng.choice(3, size=num_examples, p=[0.4, 0.35, 0.25])
  noise = rng.normal(size=(num_examples, 3))
  x = MEANS[labels] + np.einsum('nde,ne->nd', CHOLESKY_FACTORS[labels], noise)
  return x.astype(np.float32), labels.astype(np.int32)


def features_dataset(train_split, test_split):
  """A data set whose splits already hold feature vectors [N, D]."""
  (x_train, y_train), (x_test, y_test) = train_split, test_split
  return data.Dataset(
      name='synthetic', train=data.Split(x_train, y_train), validation=None,
      test=data.Split(x_test, y_test), source='synthetic',
      image_shape=x_train.shape[1:], num_classes=int(y_train.max()) + 1,
      class_names=tuple(map(str, range(int(y_train.max()) + 1))))


def gmm_config(arg=None, **overrides):
  """experiments/gmm.py for a data set passed in as features."""
  spec = 'experiments/gmm.py' + (f':{arg}' if arg else '')
  defaults = {'data.features': None, 'eval.batch_size': 200,
              'checkpoint_every': 0}
  return loading.load_config(spec, **{**defaults, **overrides})


def train_losses(workdir):
  """{step: train/loss} read back from TensorBoard."""
  accumulator = event_accumulator.EventAccumulator(
      os.path.join(workdir, 'tensorboard'),
      size_guidance={event_accumulator.SCALARS: 0})
  accumulator.Reload()
  return {event.step: event.value
          for event in accumulator.Scalars('train/loss')}


def loop_initialisation_key(config):
  """The key the loop's first step seeds k-means++ with (first example's)."""
  step_key = jax.random.fold_in(prng.named_keys(config.seed)['train'], 0)
  keys = prng.example_keys(step_key, jnp.arange(1))
  return prng.split_per_example(keys, 2)[1][0]


def first_batch(config, x):
  """The training examples in the order of the loop's first (full) batch."""
  order = pipeline.BatchOrder(config.seed, len(x), config.batch_size)
  return x[order.indices(0, 1)[0]]


def non_increasing(values, relative_tolerance):
  values = np.asarray(values)
  return np.all(np.diff(values) <= relative_tolerance * np.abs(values[:-1]))


@pytest.mark.parametrize('covariance_type', ['diag', 'full'])
def test_loop_is_exact_em(covariance_type, tmp_path):
  """Per-step NLL never increases, and the loop gives gmm.fit_gmm's fit."""
  x, labels = overlapping_mixture(0, 600)
  dataset = features_dataset((x, labels), overlapping_mixture(1, 200))
  num_steps = 30
  config = gmm_config(
      batch_size=600, num_train_steps=num_steps, log_every=1,
      **{'model.num_components': 3, 'model.covariance_type': covariance_type})
  result = train.train_and_evaluate(config, str(tmp_path), dataset)

  losses = train_losses(str(tmp_path))
  assert sorted(losses) == list(range(1, num_steps + 1))
  losses = [losses[step] for step in range(1, num_steps + 1)]
  assert non_increasing(losses, 1e-6)
  assert losses[0] - losses[-1] > 0.05  # EM did real work.

  initial = gmm.init_gmm(loop_initialisation_key(config), first_batch(config, x),
                        3, covariance_type)
  expected, history = gmm.fit_gmm(None, x, 3, covariance_type,
                                 max_steps=num_steps, tol=0.0, init=initial)
  assert int(history.num_steps) == num_steps
  # Step s reports -log p under the parameters after s - 1 M-steps.
  np.testing.assert_allclose(
      losses, -np.asarray(history.mean_log_likelihood[:num_steps]), rtol=1e-5)
  exp = experiment.build_experiment(config, dataset)
  fitted = exp.model.apply(evaluators.variables_of(result['state']),
                           method=exp.model.mixture)
  chex.assert_trees_all_close(fitted, expected, atol=2e-4, rtol=2e-4)
  assert result['metrics']['cluster_accuracy'] > 0.6
  assert result['metrics']['cluster_accuracy_train'] > 0.6


def test_fit_does_not_depend_on_device_count():
  """8 fake devices fit the same mixture and classifier as 1 device."""
  differences = multidevice.run_python("""
      import json, sys
      sys.path.insert(0, 'tests')
      import tempfile
      import jax
      import numpy as np
      from mixture_test import (clusters_with_own_boundaries,
                                features_dataset, gmm_config,
                                overlapping_mixture)
      from vaejax import train

      def fit(dataset, arg, num_devices, **overrides):
        config = gmm_config(arg, num_devices=num_devices,
                            num_train_steps=12, steps_per_dispatch=12,
                            log_every=12, **{'eval.extras': ()}, **overrides)
        with tempfile.TemporaryDirectory() as workdir:
          state = train.train_and_evaluate(config, workdir, dataset)['state']
        return jax.device_get(state['model_state'])

      def max_difference(a, b):
        return max(float(np.max(np.abs(u - v)))
                   for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

      mixture = features_dataset(overlapping_mixture(0, 800),
                                 overlapping_mixture(1, 200))
      rng = np.random.default_rng(9)
      boundaries = features_dataset(clusters_with_own_boundaries(rng, 800),
                                    clusters_with_own_boundaries(rng, 200))
      gmm = dict(batch_size=800, **{'model.num_components': 3,
                                    'model.covariance_type': 'full'})
      classifier = dict(batch_size=800, **{
          'model.num_components': 3, 'objective.positive_classes': (1,)})
      print(json.dumps({
          'gmm': max_difference(fit(mixture, None, 8, **gmm),
                                fit(mixture, None, 1, **gmm)),
          'classifier': max_difference(
              fit(boundaries, 'classifier', 8, **classifier),
              fit(boundaries, 'classifier', 1, **classifier)),
      }))
      """, num_devices=8)
  assert differences['gmm'] < 1e-5, differences
  assert differences['classifier'] < 1e-4, differences


def test_mixture_classifier_in_the_loop(tmp_path):
  """Generalised EM in the loop: never worse, mixture_classifier.fit_mixture_classifier's
  fit, and a clear win over logistic regression."""
  rng = np.random.default_rng(9)
  x, y = clusters_with_own_boundaries(rng, 1500)
  dataset = features_dataset((x, y), clusters_with_own_boundaries(rng, 1500))
  num_steps = 120
  config = gmm_config('classifier', batch_size=1500, num_train_steps=num_steps,
                      steps_per_dispatch=1, log_every=1,
                      **{'model.num_components': 3,
                         'objective.positive_classes': (1,)})
  result = train.train_and_evaluate(config, str(tmp_path), dataset)

  # -log p(x, y) never increases.
  losses = train_losses(str(tmp_path))
  assert non_increasing([losses[step] for step in sorted(losses)], 1e-6)
  expected, _ = mixture_classifier.fit_mixture_classifier(
      loop_initialisation_key(config), first_batch(config, x),
      first_batch(config, y), 3, max_steps=num_steps, tol=0.0)
  exp = experiment.build_experiment(config, dataset)
  fitted = exp.model.apply(evaluators.variables_of(result['state']),
                           method=exp.model.classifier)
  chex.assert_trees_all_close(fitted, expected, atol=1e-3)
  metrics = result['metrics']
  assert metrics['classifier_accuracy'] >= 0.88
  assert metrics['classifier_accuracy'] >= (
      metrics['logistic_regression_accuracy'] + 0.15)


def test_pca_features_match_numpy(tiny_data_dir):
  config = loading.load_config(
      'experiments/gmm.py', **{'data.dir': tiny_data_dir,
                               'data.source': 'idx', 'data.feature_dim': 5,
                               'batch_size': 256})
  images = data.load_dataset(config.data)
  projected = stages.build_experiment(config, images).dataset

  pixels = images.train.images.reshape(len(images.train), -1) / 255.0
  mean = pixels.mean(axis=0)
  _, _, right_singular_vectors = np.linalg.svd(pixels - mean,
                                               full_matrices=False)
  components = right_singular_vectors[:5].T
  for split in ('train', 'test'):
    expected = (getattr(images, split).images.reshape(-1, 784) / 255.0
                - mean) @ components
    actual = getattr(projected, split).images
    assert actual.dtype == np.float32
    chex.assert_shape(actual, expected.shape)
    # Principal axes are defined up to sign.
    signs = np.sign(np.sum(actual * expected, axis=0))
    np.testing.assert_allclose(actual, expected * signs, atol=1e-4)
    np.testing.assert_array_equal(getattr(projected, split).labels,
                                  getattr(images, split).labels)
  assert projected.image_shape == (5,)


def test_runlocal_on_idx_data_resumes_exactly(tiny_data_dir, tmp_path):
  """experiments/gmm.py:runlocal on the tiny IDX data set; 10 + 10 EM
  iterations give the statistics of 20 in one go."""
  def config(num_train_steps, extras=()):
    return loading.load_config(
        'experiments/gmm.py:runlocal', **{
            'data.dir': tiny_data_dir, 'data.source': 'idx',
            'data.feature_dim': 8, 'batch_size': 256, 'eval.batch_size': 32,
            'num_train_steps': num_train_steps, 'eval.extras': extras})

  full = train.train_and_evaluate(config(20, ('mixture_cluster_accuracy',)),
                                  str(tmp_path / 'full'))
  train.train_and_evaluate(config(10), str(tmp_path / 'resumed'))
  resumed = train.train_and_evaluate(config(20), str(tmp_path / 'resumed'))
  chex.assert_trees_all_equal(full['state']['model_state'],
                              resumed['state']['model_state'])
  metrics = full['metrics']
  for name in ('cluster_accuracy', 'cluster_accuracy_train',
               'kmeans_cluster_accuracy_train', 'log_likelihood'):
    assert np.isfinite(metrics[name]), name
  assert metrics['cluster_accuracy'] > 0.5


def test_gmm_on_vae_latents(tiny_data_dir, tmp_path):
  vae_workdir = str(tmp_path / 'vae')
  vae = train.train_and_evaluate(
      tiny_config(tiny_data_dir, num_train_steps=2,
                  **{'eval.extras': (), 'eval.figures': ()}),
      vae_workdir)
  config = loading.load_config(
      f'experiments/gmm.py:features=vae,workdir={vae_workdir},runlocal', **{
          'data.dir': tiny_data_dir, 'data.source': 'idx', 'batch_size': 256,
          'eval.batch_size': 32, 'num_train_steps': 1})
  exp = stages.build_experiment(config)
  # The features are the VAE's posterior means of the fixed-key inputs.
  vae_exp = stages.build_experiment(
      tiny_config(tiny_data_dir, num_train_steps=2))
  evaluator = evaluators.build(vae_exp)
  x, _ = evaluator.inputs(vae_exp.dataset.test.images,
                          np.arange(len(vae_exp.dataset.test)))
  means, _ = vae_exp.model.apply(evaluators.variables_of(vae['state']), x,
                                 method=vae_exp.model.encode)
  np.testing.assert_allclose(exp.dataset.test.images, means, atol=1e-5)
  assert exp.image_shape == (vae_exp.config.model.latent_dim,)
  metrics = train.train_and_evaluate(config, str(tmp_path / 'gmm'))['metrics']
  assert np.isfinite(metrics['cluster_accuracy'])


def test_bad_feature_configs_fail_with_clear_errors(tiny_data_dir, tmp_path):
  def build(arg=None, **overrides):
    spec = 'experiments/gmm.py' + (f':{arg}' if arg else '')
    stages.build_experiment(loading.load_config(spec, **{
        'data.dir': tiny_data_dir, 'data.source': 'idx', 'batch_size': 256,
        **overrides}))

  with pytest.raises(errors.ConfigError, match='Known feature extractors'):
    build(**{'data.features': 'wavelets'})
  with pytest.raises(errors.ConfigError, match='transform="features"'):
    build(**{'data.transform': 'scale'})
  with pytest.raises(errors.ConfigError,
                     match=r'images of shape \(28, 28, 1\)'):
    build(**{'data.features': None, 'data.transform': 'scale'})
  with pytest.raises(errors.UserError, match='no config.json'):
    build(f'features=vae,workdir={tmp_path}')
