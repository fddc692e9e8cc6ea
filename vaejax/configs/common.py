"""Blocks shared by the experiment files: one config schema.

Every experiment file (`experiments/*.py`) builds its config from these
blocks and sets every key the library reads; library code reads keys
directly (`config.data.on_device`, never `.get(key, default)`), so a default
lives in exactly one place: here, or in the experiment file that overrides
it.

  parse_variants     'conv,beta=4,runlocal' after the colon of --config
  data               config.data: data set, source, transform, first-stage
                     features
  likelihood         the likelihood keys of config.objective
  optimizer          config.optimizer (optax; vaejax/optim.py)
  training           the run's length, intervals and devices (top level)
  evaluation         config.eval: split, sizes, and every evaluation's and
                     figure's own keys (vaejax/evaluators/)
  runlocal           the `runlocal` variant: a run of seconds on a CPU
  complete_saved_config  keys a config.json saved before the key existed
                     gets, with the value the library used then
"""
import logging

import ml_collections
from ml_collections import config_dict

from vaejax import errors


def parse_variants(arg, known_variants, experiment_file):
  """'conv,beta=4,runlocal' -> {'conv': True, 'beta': '4', 'runlocal': True}.

  The variant string after ':' in `--config experiments/x.py:...`; a name
  not in `known_variants` is an error that lists them.
  """
  variants = {}
  for part in filter(None, (arg or '').split(',')):
    name, _, value = part.partition('=')
    variants[name.strip()] = value.strip() if value else True
  unknown = set(variants) - set(known_variants)
  if unknown:
    raise errors.ConfigError(
        f'Unknown variant(s) {", ".join(sorted(unknown))} in '
        f'{experiment_file}:{arg}. Known variants: '
        f'{", ".join(known_variants)}.')
  return variants


def variant_value(variants, name, default):
  """A variant's value as the type of `default`; `default` when the variant
  is given bare (`sparse`) or absent."""
  value = variants.get(name, True)
  if value is True:
    return default
  try:
    return type(default)(value)
  except ValueError as e:
    raise errors.ConfigError(
        f'Variant {name}={value!r}: expected a {type(default).__name__} '
        f'(like {name}={default}).') from e


def data(variants, transform, **overrides):
  """`config.data`: Fashion-MNIST (MNIST with the `mnist` variant), IDX files
  found automatically, TFDS as the fallback; no first stage."""
  block = ml_collections.ConfigDict(dict(
      # 'fashion_mnist', 'mnist', 'npz' (a .npz file at `path`),
      # 'image_folder' (PNG/JPEG under the folder `path`, one sub-folder per
      # class) or the name of a prepared TFDS data set, e.g. 'cifar10'
      # (vaejax/data/loading.py).
      name='mnist' if 'mnist' in variants else 'fashion_mnist',
      path=config_dict.placeholder(str),
      # IDX files of mnist / fashion_mnist; when set, the only place read.
      dir=config_dict.placeholder(str),
      source='auto',
      tfds_data_dir=config_dict.placeholder(str),
      # (height, width) to resize every image to: --config.data.image_size=32,32
      image_size=config_dict.placeholder(tuple),
      # Held out for testing when the data has no test split.
      test_fraction=0.1,
      validation_size=0,
      download_timeout_s=5.0,
      transform=transform,
      # False: the host gathers batches (with prefetch) instead of keeping
      # the training set on device; for data sets that do not fit.
      on_device=True,
      # A first stage (vaejax/stages.py): 'pca', 'vae_latents' or 'vq_codes'
      # (a VQ-VAE's integer code grids) replaces
      # the images by feature vectors (then transform='features').
      features=config_dict.placeholder(str),
      feature_dim=50,
      features_workdir=config_dict.placeholder(str),
  ))
  block.update(overrides)
  return block


def likelihood(name='bernoulli', likelihood_scale=0.1, min_log_scale=-7.0,
               num_mixtures=10):
  """The likelihood keys of `config.objective` (vaejax/objectives/
  likelihoods.py): fixed scale of 'gaussian'/'laplace', floor of the learned
  log-scales, components of 'logistic_mixture'."""
  return dict(likelihood=name, likelihood_scale=likelihood_scale,
              min_log_scale=min_log_scale, num_mixtures=num_mixtures)


def optimizer(**overrides):
  """`config.optimizer`: Adam 1e-3, constant schedule, no clipping."""
  block = ml_collections.ConfigDict(dict(
      name='adam', learning_rate=1e-3,
      # 'constant', 'cosine' (warm-up then cosine decay to
      # end_learning_rate) or 'warmup_constant'.
      schedule='constant', warmup_steps=0, end_learning_rate=0.0,
      # Global-norm clipping of the gradient (0: off).
      grad_clip_norm=0.0,
      b1=0.9, b2=0.999, weight_decay=1e-4, momentum=0.9,
      # > 0: skip steps whose gradient norm is above this (VDVAE); counted
      # as train/skipped_updates.
      skip_update_above_grad_norm=0.0,
      # > 0: layer-wise learning-rate decay of a ViT's blocks (BEiT, MAE
      # fine-tuning): block i of L learns at layer_decay ** (L - i) times
      # the rate, the embeddings at layer_decay ** (L + 1), the head at 1.
      layer_decay=0.0))
  block.update(overrides)
  return block


def vit_encoder(variants):
  """The ViT encoder keys of `config.model` (a masked autoencoder's encoder
  and the ViT classifier that fine-tunes it): patch 4 (a 7x7 grid on 28x28),
  width 128, 6 pre-norm blocks of 4 heads, mean-pooled tokens or, with the
  `cls` variant, a class token."""
  return dict(patch_size=variant_value(variants, 'patch', 4), embed_dim=128,
              depth=6, num_heads=4, class_token='cls' in variants)


def vit_encoder_runlocal(model):
  """The `runlocal` size of `vit_encoder`'s keys: width 32, 2 blocks."""
  model.embed_dim = 32
  model.depth = 2


def training(config, batch_size, num_train_steps, eval_every,
             steps_per_dispatch=100, log_every=500, checkpoint_every=2000,
             checkpoints_to_keep=3):
  """Sets the top-level keys of a run on `config`."""
  config.seed = 0
  # None: every visible device.
  config.num_devices = config_dict.placeholder(int)
  config.batch_size = batch_size
  config.num_train_steps = num_train_steps
  # Train steps per dispatch to the devices (one lax.scan).
  config.steps_per_dispatch = steps_per_dispatch
  config.log_every = log_every
  # Quick evaluations during training (0: none; the final one always runs).
  config.eval_every = eval_every
  config.checkpoint_every = checkpoint_every
  config.checkpoints_to_keep = checkpoints_to_keep
  # > 0: keep an exponential moving average of the parameters with this
  # decay and evaluate it instead of the parameters (VDVAE, NVAE).
  config.ema_decay = 0.0
  # > 0: stop after this many periodic evaluations (every eval_every steps)
  # without a lower validation loss (needs data.validation_size > 0); the
  # final evaluation uses the best variables.
  config.early_stopping_patience = 0
  # A trained workdir whose parameters initialise the matching parameter
  # groups of this model (e.g. a masked autoencoder's encoder, fine-tuned
  # as a classifier's backbone); None: random initialisation.
  config.init_from = config_dict.placeholder(str)


def evaluation(**overrides):
  """`config.eval`: what is measured on which split, and each evaluation's
  own keys (the evaluation that reads each is named beside it)."""
  block = ml_collections.ConfigDict(dict(
      split='test', batch_size=500,
      # Periodic evaluations during training use the first quick_examples.
      quick_examples=2000,
      max_examples=config_dict.placeholder(int),
      # Names in vaejax/evaluators/__init__.py.
      extras=(), figures=(),
      # iwae: k importance samples, drawn in chunks, per batch of examples
      # (None: batch_size).
      iwae_samples=5000, iwae_chunk=250,
      iwae_batch_size=config_dict.placeholder(int),
      # linear_probe: training examples the probe is fitted on.
      probe_train_examples=10_000,
      # clustering: pixels are reduced to this many principal components.
      pixel_pca_dims=50,
      # traversals, pca_scatter.
      traversal_dims=8, scatter_examples=2000,
      # denoising: corruption levels of the PSNR table and figure.
      denoising_levels=(0.1, 0.3, 0.5),
      # sample_quality, sample_quality_reference: the classifier whose
      # penultimate features they compare (experiments/classifier.py), the
      # number of samples (and of training images for the floor), KID's
      # subsets, precision / recall's k, the reference degradations (noise
      # sigma in [0, 1] intensity, blur sigma in pixels).
      sample_quality_classifier_workdir='workdirs/classifier',
      sample_quality_samples=10_000, kid_subsets=100, kid_subset_size=1000,
      precision_recall_k=3, reference_noise_levels=(0.05, 0.1, 0.2, 0.4),
      reference_blur_levels=(0.5, 1.0, 2.0)))
  block.update(overrides)
  return block


def paper_protocol(config):
  """The training protocol of the published binarised Fashion-MNIST density
  table (Tomczak & Welling 2018's VampPrior code, as used by the Exemplar
  VAE paper): batch 100, 50k/10k train/validation split, an evaluation on
  all of the validation split every epoch, early stopping with patience 50
  epochs (at most 2000), KL warm-up over 100 epochs, Adam 5e-4. The model
  keys (gated MLP 300-300, 40 latents, log-variance clip) are the
  experiment file's."""
  steps_per_epoch = 50_000 // 100
  config.batch_size = 100
  config.num_train_steps = 2000 * steps_per_epoch
  config.eval_every = steps_per_epoch
  config.log_every = 10 * steps_per_epoch
  config.checkpoint_every = 10 * steps_per_epoch
  config.early_stopping_patience = 50
  config.data.validation_size = 10_000
  config.objective.kl_warmup_steps = 100 * steps_per_epoch
  config.optimizer.learning_rate = 5e-4
  config.eval.quick_examples = 10_000


def runlocal(config):
  """The `runlocal` variant: 20 steps and a small evaluation (seconds)."""
  config.num_train_steps = 20
  config.steps_per_dispatch = 10
  config.log_every = 10
  config.eval_every = 0
  config.checkpoint_every = 10
  config.eval.max_examples = 1000
  config.eval.batch_size = 200
  config.eval.probe_train_examples = 1000


# Keys added to the schema after workdirs were written with configs that
# lack them, and the value the library used for a missing key then.
SAVED_CONFIG_DEFAULTS = {
    'num_devices': None,
    'checkpoints_to_keep': 3,
    'ema_decay': 0.0,
    'early_stopping_patience': 0,
    'init_from': None,
    'data.on_device': True,
    'data.path': None,
    'data.image_size': None,
    'data.test_fraction': 0.1,
    'data.features': None,
    'data.feature_dim': 50,
    'data.features_workdir': None,
    'model.image_shape': None,
    'model.conv_impl': 'auto',
    'model.gated': False,
    'model.logvar_range': None,
    'model.drop_path_rate': 0.0,
    'objective.likelihood_scale': 0.1,
    'objective.min_log_scale': -7.0,
    'objective.num_mixtures': 10,
    'optimizer.schedule': 'constant',
    'optimizer.warmup_steps': 0,
    'optimizer.end_learning_rate': 0.0,
    'optimizer.grad_clip_norm': 0.0,
    'optimizer.b1': 0.9,
    'optimizer.b2': 0.999,
    'optimizer.weight_decay': 1e-4,
    'optimizer.momentum': 0.9,
    'optimizer.skip_update_above_grad_norm': 0.0,
    'optimizer.layer_decay': 0.0,
    'eval.split': 'test',
    'eval.quick_examples': 2000,
    'eval.max_examples': None,
    'eval.extras': (),
    'eval.figures': (),
    'eval.iwae_samples': 5000,
    'eval.iwae_chunk': 250,
    'eval.iwae_batch_size': None,
    'eval.probe_train_examples': 10_000,
    'eval.pixel_pca_dims': 50,
    'eval.traversal_dims': 8,
    'eval.scatter_examples': 2000,
    'eval.denoising_levels': (0.1, 0.3, 0.5),
    'eval.sample_quality_classifier_workdir': 'workdirs/classifier',
    'eval.sample_quality_samples': 10_000,
    'eval.kid_subsets': 100,
    'eval.kid_subset_size': 1000,
    'eval.precision_recall_k': 3,
    'eval.reference_noise_levels': (0.05, 0.1, 0.2, 0.4),
    'eval.reference_blur_levels': (0.5, 1.0, 2.0),
}


def complete_saved_config(config):
  """`config` (loaded from a workdir's config.json) with the keys of
  SAVED_CONFIG_DEFAULTS it lacks added; logs which."""
  added = []
  for key, value in SAVED_CONFIG_DEFAULTS.items():
    *sections, leaf = key.split('.')
    node = config
    if any(section not in node for section in sections):
      continue
    for section in sections:
      node = node[section]
    if leaf not in node:
      node[leaf] = value
      added.append(key)
  if added:
    logging.info('config.json predates keys %s; using their former values.',
                 ', '.join(added))
  return config


# The range of every numeric setting, by key (the leaf name where it is the
# same everywhere). Checked before any data is loaded, so a bad value fails
# at start-up, not after training.
POSITIVE = 'positive'
NON_NEGATIVE = 'non-negative'
UNIT_INTERVAL = 'in [0, 1)'
RANGES = {
    'batch_size': POSITIVE, 'num_train_steps': POSITIVE,
    'steps_per_dispatch': POSITIVE, 'log_every': POSITIVE,
    'eval_every': NON_NEGATIVE, 'checkpoint_every': NON_NEGATIVE,
    'checkpoints_to_keep': POSITIVE, 'num_devices': POSITIVE,
    'ema_decay': UNIT_INTERVAL, 'early_stopping_patience': NON_NEGATIVE,
    'validation_size': NON_NEGATIVE, 'download_timeout_s': POSITIVE,
    'test_fraction': UNIT_INTERVAL, 'image_size': POSITIVE,
    'feature_dim': POSITIVE,
    'latent_dim': POSITIVE, 'latent_dims': POSITIVE, 'width': POSITIVE,
    'bottleneck': POSITIVE, 'latent_channels': POSITIVE,
    'groups_per_scale': POSITIVE, 'code_dim': POSITIVE, 'hidden_size': POSITIVE,
    'hidden_sizes': POSITIVE, 'channels': POSITIVE,
    'num_components': POSITIVE, 'reg_covar': POSITIVE,
    'likelihood_scale': POSITIVE, 'num_mixtures': POSITIVE,
    'beta': NON_NEGATIVE,
    'kl_warmup_steps': NON_NEGATIVE, 'free_bits': NON_NEGATIVE,
    'num_samples': POSITIVE, 'iwae_samples': POSITIVE,
    'smooth_l1_beta': POSITIVE, 'sparsity_weight': NON_NEGATIVE,
    'near_zero_threshold': NON_NEGATIVE, 'corruption_level': NON_NEGATIVE,
    'contractive_weight': NON_NEGATIVE, 'num_projections': POSITIVE,
    'gradient_steps_per_m_step': POSITIVE, 'label_learning_rate': POSITIVE,
    'learning_rate': NON_NEGATIVE, 'warmup_steps': NON_NEGATIVE,
    'end_learning_rate': NON_NEGATIVE, 'grad_clip_norm': NON_NEGATIVE,
    'b1': UNIT_INTERVAL, 'b2': UNIT_INTERVAL, 'momentum': UNIT_INTERVAL,
    'weight_decay': NON_NEGATIVE, 'skip_update_above_grad_norm': NON_NEGATIVE,
    'layer_decay': UNIT_INTERVAL,
    'quick_examples': POSITIVE, 'max_examples': POSITIVE,
    'iwae_chunk': POSITIVE, 'iwae_batch_size': POSITIVE,
    'probe_train_examples': POSITIVE, 'pixel_pca_dims': POSITIVE,
    'traversal_dims': POSITIVE, 'scatter_examples': POSITIVE,
    'denoising_levels': NON_NEGATIVE,
    'patch_size': POSITIVE, 'embed_dim': POSITIVE, 'depth': POSITIVE,
    'num_heads': POSITIVE, 'decoder_dim': POSITIVE,
    'decoder_depth': NON_NEGATIVE, 'decoder_heads': POSITIVE,
    'mask_ratio': UNIT_INTERVAL,
    # 0 for an unconditional prior; a classifier checks it is at least 2.
    'num_classes': NON_NEGATIVE, 'convs_per_stage': POSITIVE,
    'dropout_rate': UNIT_INTERVAL, 'drop_path_rate': UNIT_INTERVAL,
    'label_smoothing': UNIT_INTERVAL,
    'augment_pad': NON_NEGATIVE,
    'sample_quality_samples': POSITIVE, 'kid_subsets': POSITIVE,
    'kid_subset_size': POSITIVE, 'precision_recall_k': POSITIVE,
    'reference_noise_levels': NON_NEGATIVE,
    'reference_blur_levels': NON_NEGATIVE,
    'num_codes': POSITIVE, 'num_residual': NON_NEGATIVE,
    'ema_epsilon': POSITIVE, 'commitment_cost': NON_NEGATIVE,
    'codebook_decay': UNIT_INTERVAL, 'restart_below': NON_NEGATIVE,
    'feature_channels': POSITIVE, 'num_layers': POSITIVE,
    'kernel_size': POSITIVE, 'first_kernel_size': POSITIVE,
    'output_features': POSITIVE,
}
_IN_RANGE = {
    POSITIVE: lambda v: v > 0,
    NON_NEGATIVE: lambda v: v >= 0,
    UNIT_INTERVAL: lambda v: 0 <= v < 1,
}


def check_ranges(config, prefix=''):
  """Raises ConfigError for the first numeric setting out of its range."""
  for key, value in config.items():
    name = f'{prefix}{key}'
    if isinstance(value, ml_collections.ConfigDict):
      check_ranges(value, f'{name}.')
      continue
    rule = RANGES.get(key)
    values = value if isinstance(value, (tuple, list)) else (value,)
    if rule is None or value is None:
      continue
    for item in values:
      if isinstance(item, bool) or not isinstance(item, (int, float)):
        raise errors.ConfigError(
            f'config.{name}={value!r} must be a number ({rule}).')
      if not _IN_RANGE[rule](item):
        raise errors.ConfigError(
            f'config.{name}={value!r} must be {rule}: set '
            f'--config.{name} to a value in range.')
