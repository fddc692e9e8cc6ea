"""The classifier family (experiments/classifier.py) and the sample-quality
evaluations in its feature space, on the tiny IDX data set."""
import json
import logging
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from vaejax import evaluate
from vaejax import prng
from vaejax import train
from vaejax.data import augmentations
from vaejax.models import family as family_lib
from vaejax.objectives import classifier as classifier_objectives

TINY_CLASSIFIER = {'model.channels': (8, 16), 'model.hidden_size': 16,
                   'eval.batch_size': 32, 'batch_size': 32,
                   'num_train_steps': 40, 'steps_per_dispatch': 20,
                   'log_every': 20, 'checkpoint_every': 40}
# Small enough for the 64-image tiny test split.
TINY_QUALITY = {'eval.sample_quality_samples': 64, 'eval.kid_subsets': 5,
                'eval.kid_subset_size': 32,
                'eval.reference_noise_levels': (0.05, 0.2, 0.5),
                'eval.reference_blur_levels': (0.7, 1.5, 3.0)}


@pytest.fixture(scope='module')
def classifier_run(tiny_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('classifier') / 'w')
  config = tiny_config(tiny_data_dir, 'classifier', **TINY_CLASSIFIER)
  return workdir, train.train_and_evaluate(config, workdir)


def numpy_cross_entropy(logits, labels, smoothing):
  logits = np.asarray(logits, np.float64)
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  targets = np.full(logits.shape, smoothing / logits.shape[1])
  targets[np.arange(len(labels)), labels] += 1 - smoothing
  return -(targets * log_probs).sum(-1)


class LinearLogits:
  """A stand-in network: logits = x W, recording what it was given."""

  def __init__(self, weights):
    self.weights = weights
    self.calls = []

  def apply(self, variables, x, dropout_keys=None):
    self.calls.append((x, dropout_keys))
    return x.reshape(x.shape[0], -1) @ self.weights


@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_objective_is_the_cross_entropy(smoothing):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(6, 4, 4, 1)), jnp.float32)
  labels = jnp.asarray([0, 1, 2, 0, 1, 2])
  network = LinearLogits(jnp.asarray(rng.normal(size=(16, 3)), jnp.float32))
  config = {'label_smoothing': smoothing, 'augment_pad': 0,
            'augment_flip': False}
  loss_fn = classifier_objectives.make_cross_entropy(
      type('Config', (), config))
  keys = prng.example_keys(jax.random.key(0), jnp.arange(6))
  batch = {'inputs': x, 'label': labels}
  logits = np.asarray(network.apply(None, x))
  loss, metrics, state = loss_fn(network, {}, batch, keys, 0, True)
  np.testing.assert_allclose(loss, numpy_cross_entropy(logits, labels,
                                                       smoothing), rtol=1e-5)
  np.testing.assert_allclose(metrics['cross_entropy'],
                             numpy_cross_entropy(logits, labels, 0.0),
                             rtol=1e-5)
  np.testing.assert_array_equal(metrics['accuracy'],
                                np.argmax(logits, -1) == labels)
  assert state == {}
  assert network.calls[-1][1] is not None  # Dropout keys in training.
  held_out, _, _ = loss_fn(network, {}, batch, keys, 0, False)
  np.testing.assert_allclose(held_out, metrics['cross_entropy'], rtol=1e-6)
  assert network.calls[-1][1] is None


def test_objective_without_labels_says_so():
  loss_fn = classifier_objectives.make_cross_entropy(type('Config', (), {
      'label_smoothing': 0.0, 'augment_pad': 0, 'augment_flip': False}))
  with pytest.raises(Exception, match='trains on class labels'):
    loss_fn(LinearLogits(jnp.ones((4, 2))), {}, {'inputs': jnp.ones((1, 4))},
            None, 0, True)


def test_crop_and_flip_moves_pixels_within_the_padded_image():
  x = jnp.arange(2 * 6 * 6, dtype=jnp.float32).reshape(2, 6, 6, 1) + 1
  keys = prng.example_keys(jax.random.key(1), jnp.arange(2))
  np.testing.assert_array_equal(
      augmentations.random_crop_and_flip(keys, x, 0, flip=False), x)
  shifted = np.asarray(augmentations.random_crop_and_flip(keys, x, 2))
  for image, out in zip(np.asarray(x), shifted):
    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
    windows = [padded[i:i + 6, j:j + 6] for i in range(5) for j in range(5)]
    assert any(np.array_equal(out, w) or np.array_equal(out, w[:, ::-1])
               for w in windows)
  # Each example's augmentation depends on its own key only.
  one = augmentations.random_crop_and_flip(keys[1:], x[1:], 2)
  np.testing.assert_array_equal(one[0], shifted[1])
  # Over many keys, flips and every shift occur.
  many = prng.example_keys(jax.random.key(2), jnp.arange(200))
  out = np.asarray(augmentations.random_crop_and_flip(
      many, jnp.broadcast_to(x[:1], (200, 6, 6, 1)), 1))
  assert len({o.tobytes() for o in out}) == 18  # 9 shifts x 2 flips


def test_classifier_trains_and_evaluates(classifier_run):
  workdir, result = classifier_run
  metrics = result['metrics']
  chex.assert_tree_all_finite(result['state'])
  # The blobs' class is their position: far above chance (0.1).
  assert metrics['test_accuracy'] > 0.5
  assert metrics['accuracy'] == pytest.approx(metrics['test_accuracy'])
  assert metrics['test_cross_entropy'] == pytest.approx(metrics['loss'],
                                                        rel=1e-5)
  assert sum(k.startswith('class_accuracy_') for k in metrics) == 10


def test_family_contract(classifier_run, tiny_data_dir):
  from vaejax import stages
  workdir, _ = classifier_run
  trained = stages.restore(workdir)
  family = trained.exp.family
  family_lib.check_abilities(family)
  assert family.has('classify') and family.has('represent')
  assert 'nothing to sample' in family.missing(('sample',))
  x = jnp.ones((3, 28, 28, 1)) * 0.5
  features = family.represent(trained.variables, x)
  chex.assert_shape(features, (3, 16))
  # The logits are the last layer of the features (no dropout).
  params = trained.variables['params']['logits']
  np.testing.assert_allclose(
      family.classify(trained.variables, x),
      features @ params['kernel'] + params['bias'], rtol=1e-5, atol=1e-6)
  vae = tiny_config(tiny_data_dir)
  vae_family = stages.build_experiment(vae).family
  assert 'not a classifier' in vae_family.missing(('classify',))


@pytest.fixture(scope='module')
def vae_run(tiny_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('vae') / 'w')
  config = tiny_config(tiny_data_dir, **{'eval.extras': (),
                                         'eval.figures': ()})
  train.train_and_evaluate(config, workdir)
  return workdir


def copy_with_eval_settings(source, workdir, **settings):
  """A copy of the workdir `source` whose config.json has these eval keys."""
  shutil.copytree(source, workdir)
  config_path = os.path.join(workdir, 'config.json')
  with open(config_path) as f:
    saved = json.load(f)
  saved['eval'].update(settings)
  with open(config_path, 'w') as f:
    json.dump(saved, f)
  return workdir


def quality_settings(classifier_workdir):
  return {**{key.split('.')[1]: value for key, value in TINY_QUALITY.items()},
          'sample_quality_classifier_workdir': classifier_workdir}


def test_sample_quality_through_the_evaluation_command(
    classifier_run, vae_run, tmp_path):
  classifier_workdir, _ = classifier_run
  workdir = copy_with_eval_settings(vae_run, str(tmp_path / 'vae'),
                                    **quality_settings(classifier_workdir))
  result = evaluate.evaluate_checkpoint(
      workdir, extras=('sample_quality', 'sample_quality_reference'))
  metrics = result['metrics']
  for prefix in ('sample', 'reference_train'):
    for name in ('fid', 'kid', 'kid_std', 'precision', 'recall'):
      assert np.isfinite(metrics[f'{prefix}_{name}']), (prefix, name)
  noise = [metrics[f'reference_noise_{s:g}_fid'] for s in (0.05, 0.2, 0.5)]
  blur = [metrics[f'reference_blur_{s:g}_fid'] for s in (0.7, 1.5, 3.0)]
  # Monotone under noise and blur on real features, above the floor.
  assert np.all(np.diff(noise) > 0) and np.all(np.diff(blur) > 0), (noise,
                                                                    blur)
  assert metrics['reference_monotone'] == 1.0
  assert metrics['reference_train_fid'] < noise[-1]
  assert 0 <= metrics['sample_precision'] <= 1
  with open(os.path.join(workdir, 'eval', 'evaluation.json')) as f:
    assert json.load(f)['sample_fid'] == pytest.approx(metrics['sample_fid'])


def test_sample_quality_of_a_prior_over_vqvae_codes(
    classifier_run, vae_run, tiny_data_dir, tmp_path):
  """A PixelCNN prior's data are code grids, but its samples are decoded
  images: they are compared with the first stage's test images, and the
  floor is the VAE's (the same images and classifier)."""
  classifier_workdir, _ = classifier_run
  settings = quality_settings(classifier_workdir)
  stage_one = str(tmp_path / 'vqvae')
  train.train_and_evaluate(tiny_config(
      tiny_data_dir, 'vqvae', 'binarized,ema,runlocal', **{
          'model.channels': (4, 8), 'model.code_dim': 3,
          'model.num_codes': 5, 'num_train_steps': 2,
          'steps_per_dispatch': 2, 'eval.extras': ()}), stage_one)
  prior = str(tmp_path / 'prior')
  metrics = train.train_and_evaluate(tiny_config(
      tiny_data_dir, 'pixelcnn_prior', f'workdir={stage_one},codes=5,runlocal',
      **{'model.feature_channels': 8, 'model.num_layers': 2,
         'num_train_steps': 2, 'steps_per_dispatch': 2,
         'eval.extras': ('sample_quality', 'sample_quality_reference'),
         **{f'eval.{key}': value for key, value in settings.items()}}),
      prior)['metrics']
  assert metrics['sample_quality_samples'] == 64
  for name in ('fid', 'kid', 'precision', 'recall'):
    assert np.isfinite(metrics[f'sample_{name}']), name
  vae = evaluate.evaluate_checkpoint(
      copy_with_eval_settings(vae_run, str(tmp_path / 'vae'), **settings),
      extras=('sample_quality_reference',))['metrics']
  for key in ('reference_train_fid', 'reference_noise_0.2_fid'):
    assert metrics[key] == pytest.approx(vae[key], rel=1e-6), key


def test_missing_classifier_skips_with_the_command_to_train_it(
    vae_run, tmp_path, caplog):
  missing = str(tmp_path / 'no_classifier')
  workdir = str(tmp_path / 'vae')
  copy_with_eval_settings(vae_run, workdir,
                          sample_quality_classifier_workdir=missing)
  with caplog.at_level(logging.INFO):
    result = evaluate.evaluate_checkpoint(workdir, extras=('sample_quality',))
  assert not any(k.startswith('sample_') for k in result['metrics']
                 if k != 'sample_quality_samples')
  assert (f'python -m vaejax.main --config experiments/classifier.py '
          f'--workdir {missing}') in caplog.text
  assert not os.path.exists(missing)  # Never trained silently.


def test_evaluation_command_on_the_classifier_workdir(classifier_run):
  """`python -m vaejax.evaluate`'s function on the runlocal classifier gives
  the train loop's final numbers (same checkpoint, fixed keys)."""
  workdir, result = classifier_run
  evaluated = evaluate.evaluate_checkpoint(workdir)
  for name in ('test_accuracy', 'test_cross_entropy', 'accuracy', 'loss'):
    assert evaluated['metrics'][name] == pytest.approx(
        result['metrics'][name], rel=1e-6), name
