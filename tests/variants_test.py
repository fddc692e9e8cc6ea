"""Every variant of every experiment file: what it sets in the config, and a
runlocal-sized training run with it (variants combined, so that each one
trains in one of a few runs)."""
import importlib.util
import json
import os

import chex
import numpy as np
import pytest

from vaejax.configs import loading
from vaejax import train
from conftest import REPO_ROOT

# (experiment, variant string) -> {config key: the value it must have}.
VARIANT_CONFIGS = {
    ('vae', 'mnist'): {'data.name': 'mnist'},
    ('vae', 'conv'): {'model.name': 'conv_vae'},
    ('vae', 'iwae'): {'objective.name': 'iwae'},
    ('vae', 'beta=4'): {'objective.beta': 4.0},
    ('vae', 'latent=3'): {'model.latent_dim': 3},
    ('vae', 'paper'): {'model.gated': True, 'model.hidden_sizes': (300, 300),
                       'model.latent_dim': 40,
                       'model.logvar_range': (-6.0, 2.0),
                       'data.validation_size': 10_000,
                       'early_stopping_patience': 50, 'batch_size': 100},
    ('vae', 'ema=0.99'): {'ema_decay': 0.99},
    ('vae', 'runlocal'): {'num_train_steps': 20, 'eval.iwae_samples': 50},
    ('hvae', 'conv'): {'model.name': 'conv_hvae',
                       'optimizer.grad_clip_norm': 200.0,
                       'optimizer.skip_update_above_grad_norm': 3000.0,
                       'objective.kl_warmup_steps': 0,
                       'optimizer.learning_rate': 4e-3,
                       'model.groups_per_scale': (4, 2),
                       'eval.iwae_batch_size': 10, 'eval.iwae_chunk': 50},
    ('hvae', 'dlm'): {'objective.likelihood': 'logistic_mixture',
                      'data.transform': 'scale'},
    ('hvae', 'cifar10'): {'data.name': 'cifar10', 'model.name': 'conv_hvae',
                          'objective.likelihood': 'logistic_mixture',
                          'model.groups_per_scale': (4, 4),
                          'ema_decay': 0.9999, 'batch_size': 32,
                          'optimizer.grad_clip_norm': 200.0 * 3072,
                          'optimizer.skip_update_above_grad_norm':
                              400.0 * 3072},
    ('hvae', 'free_bits=0.1'): {'objective.free_bits': 0.1},
    ('hvae', 'ema=0.99'): {'ema_decay': 0.99},
    ('hvae', 'runlocal'): {'num_train_steps': 20, 'eval.iwae_samples': 50,
                           'eval.iwae_chunk': 25,
                           'early_stopping_patience': 0},
    ('ae', 'loss=mae'): {'objective.loss': 'mae'},
    ('ae', 'loss=bce'): {'objective.loss': 'bce',
                         'objective.likelihood': 'bernoulli'},
    ('ae', 'loss=smooth_l1,beta=0.5'): {'objective.loss': 'smooth_l1',
                                        'objective.smooth_l1_beta': 0.5},
    ('ae', 'sparse'): {'objective.sparsity_weight': 0.01,
                       'model.code_activation': 'relu'},
    ('ae', 'sparse=0.05'): {'objective.sparsity_weight': 0.05},
    ('ae', 'denoising'): {'objective.corruption': 'gaussian',
                          'objective.corruption_level': 0.3},
    ('ae', 'denoising=masking'): {'objective.corruption': 'masking',
                                  'objective.corruption_level': 0.5,
                                  'eval.denoising_levels': (0.25, 0.5, 0.75)},
    ('ae', 'denoising=salt_and_pepper,noise=0.1'): {
        'objective.corruption': 'salt_and_pepper',
        'objective.corruption_level': 0.1},
    ('ae', 'contractive'): {'objective.contractive_weight': 1e-3,
                            'objective.contractive_estimator': 'exact'},
    ('ae', 'contractive=0.01,projections=3'): {
        'objective.contractive_weight': 0.01,
        'objective.contractive_estimator': 'random_projection',
        'objective.num_projections': 3},
    ('ae', 'conv'): {'model.name': 'conv_autoencoder'},
    ('ae', 'linear'): {'model.hidden_sizes': ()},
    ('ae', 'code=8'): {'model.code_dim': 8},
    ('ae', 'mnist'): {'data.name': 'mnist'},
    ('ae', 'runlocal'): {'num_train_steps': 20, 'eval.max_examples': 1000},
    ('gmm', 'features=pca'): {'data.features': 'pca'},
    ('gmm', 'features=vae,workdir=/v'): {'data.features': 'vae_latents',
                                         'data.features_workdir': '/v'},
    ('gmm', 'covariance=full'): {'model.covariance_type': 'full'},
    ('gmm', 'classifier'): {'model.name': 'mixture_classifier',
                            'objective.name': 'em_mixture_classifier'},
    ('gmm', 'runlocal'): {'num_train_steps': 10},
    ('mae', 'patch=7'): {'model.patch_size': 7},
    ('mae', 'mask=0.5'): {'model.mask_ratio': 0.5},
    ('mae', 'norm_pix'): {'model.norm_pix_loss': True},
    ('mae', 'cls'): {'model.class_token': True},
    ('mae', 'epochs=2'): {'num_train_steps': 2 * (60_000 // 256)},
    ('mae', 'mnist'): {'data.name': 'mnist'},
    ('mae', 'runlocal'): {'num_train_steps': 20, 'model.embed_dim': 32},
    ('classifier', 'mlp'): {'model.name': 'mlp_classifier'},
    ('classifier', 'mnist'): {'data.name': 'mnist'},
    ('classifier', 'epochs=3'): {'num_train_steps': 3 * (60_000 // 128)},
    ('classifier', 'runlocal'): {'num_train_steps': 20,
                                 'eval.max_examples': 1000},
    ('classifier', 'vit'): {'model.name': 'vit_classifier',
                            'optimizer.weight_decay': 0.05},
    ('classifier', 'vit,pretrained=/m'): {'init_from': '/m'},
    ('classifier', 'vit,patch=7'): {'model.patch_size': 7},
    ('classifier', 'vit,cls'): {'model.class_token': True},
    ('classifier', 'vit,layer_decay'): {'optimizer.layer_decay': 0.75},
    ('classifier', 'vit,layer_decay=0.5'): {'optimizer.layer_decay': 0.5},
    ('classifier', 'vit,drop_path'): {'model.drop_path_rate': 0.1},
    ('classifier', 'vit,drop_path=0.2'): {'model.drop_path_rate': 0.2},
    ('vqvae', 'binarized'): {'data.transform': 'dynamic_binarize',
                             'objective.likelihood': 'bernoulli'},
    ('vqvae', 'k512'): {'model.num_codes': 512},
    ('vqvae', 'ema'): {'model.codebook_update': 'ema',
                       'objective.restart_below': 0.3,
                       'objective.init_codebook_from_data': True},
    ('vqvae', 'mnist'): {'data.name': 'mnist'},
    ('vqvae', 'runlocal'): {'num_train_steps': 20},
    ('pixelcnn_prior', 'workdir=/v'): {'data.features': 'vq_codes',
                                       'data.features_workdir': '/v'},
    ('pixelcnn_prior', 'workdir=/v,codes=512'): {'model.num_codes': 512},
    ('pixelcnn_prior', 'workdir=/v,conditional'): {'model.num_classes': 10},
    ('pixelcnn_prior', 'workdir=/v,runlocal'): {'num_train_steps': 20},
}

# The variant string every config of an experiment needs (compared with
# the config of this string alone).
REQUIRED_ARG = {'pixelcnn_prior': 'workdir=/v'}


# Variants that name the default explicitly.
DEFAULT_VALUED = {('gmm', 'features=pca'), ('pixelcnn_prior', 'workdir=/v')}


def config_value(config, key):
  for part in key.split('.'):
    config = config[part]
  return tuple(config) if isinstance(config, list) else config


def same(a, b):
  if isinstance(a, float) or isinstance(b, float):
    return bool(np.isclose(a, b, rtol=1e-12))
  return a == b


def known_variants(experiment):
  path = REPO_ROOT / 'experiments' / f'{experiment}.py'
  spec = importlib.util.spec_from_file_location(f'variants_{experiment}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return set(module.KNOWN_VARIANTS)


@pytest.mark.parametrize('experiment', ['vae', 'hvae', 'ae', 'gmm',
                                        'classifier', 'mae', 'vqvae',
                                        'pixelcnn_prior'])
def test_every_variant_is_checked(experiment):
  checked = {part.split('=')[0] for name, arg in VARIANT_CONFIGS
             if name == experiment for part in arg.split(',')}
  assert checked == known_variants(experiment)


@pytest.mark.parametrize('experiment, arg', sorted(VARIANT_CONFIGS))
def test_variant_sets_its_config(experiment, arg):
  config = loading.load_config(f'experiments/{experiment}.py:{arg}')
  default = loading.load_config(
      f'experiments/{experiment}.py:{REQUIRED_ARG.get(experiment, "")}')
  expected = VARIANT_CONFIGS[experiment, arg]
  for key, value in expected.items():
    assert same(config_value(config, key), value), key
  # Not what the variant-free experiment has anyway.
  assert ((experiment, arg) in DEFAULT_VALUED) != any(
      not same(config_value(default, key), value)
      for key, value in expected.items())


# Each run combines variants; together they train every variant (the AE's
# other combinations train in autoencoder_test.py, but are repeated here in
# short runs so that this list is complete). Convolutional runs are narrow.
SMALL_CONV = {'model.channels': (8, 16), 'model.hidden_size': 32}
TRAINING_RUNS = {
    'vae': [
        ('mnist,iwae,beta=4,latent=3,runlocal', {}),
        ('conv,runlocal', {**SMALL_CONV, 'num_train_steps': 4,
                           'steps_per_dispatch': 2, 'eval.extras': ()}),
        # Early stopping on a 32-example validation split, every 10 steps.
        ('paper,ema=0.99,runlocal', {'data.validation_size': 32}),
    ],
    'hvae': [
        ('dlm,free_bits=0.1,ema=0.99,runlocal', {}),
        ('conv,runlocal', {'model.width': 8, 'model.bottleneck': 4,
                           'num_train_steps': 4, 'steps_per_dispatch': 2,
                           'eval.extras': ()}),
    ],
    'ae': [
        ('loss=mae,sparse=0.05,denoising,noise=0.2,code=8,mnist,runlocal',
         {}),
        ('loss=bce,linear,contractive=0.01,projections=3,'
         'denoising=masking,runlocal', {}),
        ('loss=smooth_l1,beta=0.5,sparse,contractive,'
         'denoising=salt_and_pepper,runlocal', {'num_train_steps': 4,
                                                'steps_per_dispatch': 2}),
        ('conv,runlocal', {**SMALL_CONV, 'num_train_steps': 4,
                           'steps_per_dispatch': 2, 'eval.extras': ()}),
    ],
    'gmm': [
        ('features=pca,covariance=full,runlocal', {}),
        ('classifier,runlocal', {}),
    ],
    # The probe trains in mae_test.py.
    'mae': [('patch=7,mask=0.5,norm_pix,cls,epochs=2,mnist,runlocal',
             {'eval.extras': ()})],
    # epochs= sets num_train_steps, which runlocal then overrides.
    'classifier': [
        ('mlp,mnist,epochs=3,runlocal', {}),
        ('runlocal', {'model.channels': (8, 16), 'model.hidden_size': 16,
                      'num_train_steps': 4, 'steps_per_dispatch': 2}),
        # pretrained= fine-tunes an MAE's encoder in mae_test.py.
        ('vit,patch=7,cls,layer_decay=0.5,runlocal', {'num_train_steps': 4,
                                      'steps_per_dispatch': 2}),
        ('vit,drop_path=0.2,runlocal', {'num_train_steps': 4,
                                        'steps_per_dispatch': 2}),
    ],
    # pixelcnn_prior trains on a VQ-VAE's workdir in pixelcnn_prior_test.py.
    'vqvae': [
        ('binarized,ema,k512,mnist,runlocal',
         {'model.channels': (4, 8), 'model.code_dim': 4,
          'num_train_steps': 4, 'steps_per_dispatch': 2}),
        ('runlocal', {'model.channels': (4, 8), 'model.code_dim': 4,
                      'num_train_steps': 4, 'steps_per_dispatch': 2}),
    ],
}
DATA = {'vae': {'batch_size': 32, 'eval.batch_size': 32,
                'eval.iwae_batch_size': 32},
        'hvae': {'batch_size': 32, 'eval.batch_size': 32,
                 'eval.iwae_batch_size': 32},
        'ae': {'batch_size': 32, 'eval.batch_size': 32},
        'gmm': {'batch_size': 256, 'eval.batch_size': 32,
                'data.feature_dim': 8},
        'classifier': {'batch_size': 32, 'eval.batch_size': 32},
        'mae': {'batch_size': 32, 'eval.batch_size': 32},
        'vqvae': {'batch_size': 32, 'eval.batch_size': 32}}


# Variants trained elsewhere: features=vae in mixture_test.py and
# cli_errors_test.py (workdir= is its argument); pretrained= in mae_test.py;
# cifar10 (TFDS) in logistic_mixture_test.py.
UNTRAINED_HERE = {'gmm': {'features', 'workdir'},
                  'classifier': {'pretrained'}, 'hvae': {'cifar10'}}


def test_training_runs_cover_every_variant():
  for experiment, runs in TRAINING_RUNS.items():
    trained = {part.split('=')[0] for arg, _ in runs
               for part in arg.split(',')}
    assert trained | UNTRAINED_HERE.get(experiment, set()) >= known_variants(
        experiment), experiment


@pytest.mark.parametrize('experiment, arg, overrides', [
    (experiment, arg, overrides)
    for experiment, runs in TRAINING_RUNS.items()
    for arg, overrides in runs])
def test_variants_train_at_runlocal_size(tiny_data_dir, tmp_path, experiment,
                                         arg, overrides):
  config = loading.load_config(
      f'experiments/{experiment}.py:{arg}',
      **{'data.dir': tiny_data_dir, 'data.source': 'idx',
         'eval.figures': (), **DATA[experiment], **overrides})
  result = train.train_and_evaluate(config, str(tmp_path))
  assert int(result['state']['step']) == config.num_train_steps
  chex.assert_tree_all_finite(result['state'])
  metrics = result['metrics']
  assert all(np.isfinite(value) for value in metrics.values()), metrics
  # The run used the variants: the saved config has each one's values.
  with open(os.path.join(tmp_path, 'config.json')) as f:
    saved = json.load(f)
  parts = arg.split(',')
  for part in parts:
    # Keys that another part or an override of this run (or DATA) sets
    # instead.
    others = set(overrides).union(DATA[experiment], *(
        VARIANT_CONFIGS.get((experiment, other), {})
        for other in parts if other != part))
    if any(other.startswith('noise=') for other in parts):
      others.add('objective.corruption_level')
    for key, value in VARIANT_CONFIGS.get((experiment, part), {}).items():
      if key not in others:
        assert same(config_value(saved, key), value), (part, key)
  objective = config.objective
  if experiment == 'ae':
    assert ('jacobian_sq_norm' in metrics) == (
        objective.contractive_weight > 0)
  if objective.name == 'iwae':
    assert metrics['nll_iwae'] <= metrics['nll_elbo'] + 1e-3
