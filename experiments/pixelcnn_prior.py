r"""A gated PixelCNN prior over the code grids of a trained VQ-VAE (stage 2).

  python -m vaejax.main --config experiments/vqvae.py:binarized \
      --workdir workdirs/vqvae_binarized
  python -m vaejax.main \
      --config experiments/pixelcnn_prior.py:workdir=workdirs/vqvae_binarized \
      --workdir workdirs/pixelcnn_prior

The first stage (`config.data.features='vq_codes'`, vaejax/stages.py)
encodes the training and test sets once into 7x7 integer code grids with
the VQ-VAE of `workdir=`; the prior trains on them in the one train loop
(categorical NLL of each code given the codes before it). Samples are drawn
one position at a time in one jitted loop and decoded by the VQ-VAE's
decoder (the `samples` figure).

Variants, comma-separated after a colon and combinable:
  workdir=<path>  the VQ-VAE's workdir (experiments/vqvae.py); required
  codes=<K>       its number of codes (default 128; k512 runs: codes=512)
  conditional     class-conditional prior (a per-class bias in every gate);
                  samples are drawn for the classes 0, 1, ..., 9 in turn
  runlocal        a few steps: finishes in seconds

Reports (W/eval/metrics.json, test codes): nats_per_code, nll_per_image
(= loss, nats), and from 'two_stage_bound' nll_bound = -log p(x | z_q(x))
- log p_prior(z_q(x)) >= -log p(x) in nats per test image (with a
`binarized` VQ-VAE comparable with the VAEs' nll_iwae), its two terms and
bits/dim. Measured numbers: README, "VQ-VAE and its PixelCNN prior".
"""
import ml_collections
from ml_collections import config_dict

from vaejax import errors
from vaejax.configs import common

KNOWN_VARIANTS = ('workdir', 'codes', 'conditional', 'runlocal')


def get_config(arg=None):
  variants = common.parse_variants(arg, KNOWN_VARIANTS,
                                   'experiments/pixelcnn_prior.py')
  if not isinstance(variants.get('workdir'), str):
    raise errors.ConfigError(
        'experiments/pixelcnn_prior.py needs workdir=<the workdir of a '
        'trained VQ-VAE>, e.g. experiments/pixelcnn_prior.py:workdir=W.')
  config = ml_collections.ConfigDict()
  steps_per_epoch = 60_000 // 128
  common.training(config, batch_size=128,
                  num_train_steps=10 * steps_per_epoch,
                  eval_every=2 * steps_per_epoch, log_every=200)
  config.data = common.data(variants, 'features', features='vq_codes',
                            features_workdir=variants['workdir'])
  config.model = ml_collections.ConfigDict(dict(
      name='pixelcnn_prior',
      num_codes=common.variant_value(variants, 'codes', 128),
      feature_channels=64, num_layers=8, kernel_size=3, first_kernel_size=7,
      output_features=256,
      # 0: unconditional; else the number of classes to condition on.
      num_classes=10 if 'conditional' in variants else 0,
      conv_impl='auto',
      image_shape=config_dict.placeholder(tuple)))
  config.objective = ml_collections.ConfigDict(dict(
      name='autoregressive',
      # The prior is its own categorical likelihood; these keys only
      # complete the schema.
      **common.likelihood('bernoulli'),
  ))
  config.optimizer = common.optimizer(learning_rate=1e-3)
  config.eval = common.evaluation(extras=('two_stage_bound',),
                                  figures=('samples',))
  if 'runlocal' in variants:
    common.runlocal(config)
  return config
