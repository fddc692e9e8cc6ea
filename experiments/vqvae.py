r"""VQ-VAE on Fashion-MNIST: a 7x7 grid of discrete codes (stage 1).

  python -m vaejax.main --config experiments/vqvae.py:binarized \
      --workdir workdirs/vqvae_binarized

Conv encoder (two stride-2 convolutions, 28x28 -> 7x7, a residual block) to
a 7x7 grid of 16-dim vectors, each replaced by the nearest of K = 128
codebook vectors, and the mirrored decoder; straight-through gradients,
codebook loss and commitment loss (beta = 0.25). Stage 2 is
experiments/pixelcnn_prior.py on this run's workdir.

Variants, comma-separated after a colon and combinable:
  binarized   dynamically binarised images and a Bernoulli decoder (then
              the two-stage bound of experiments/pixelcnn_prior.py is
              comparable with the VAEs' nats); default: grey levels in
              [0, 1] and a Gaussian decoder with sigma = 0.1 (MSE)
  k512        K = 512 codes instead of 128
  ema         EMA codebook updates (decay 0.99, Laplace smoothing) instead
              of the codebook loss, the codebook initialised from encoder
              outputs and dead codes (EMA use below 30% of uniform) restarted
              at encoder outputs of the current batch
  mnist       MNIST instead of Fashion-MNIST
  runlocal    a few steps: finishes in seconds

Reports (W/eval/metrics.json, test set): recon_nll (nats), recon_mse,
codebook_perplexity and codebook_fraction_used over the whole test set,
nll_iwae = the bound under a uniform prior over codes (recon_nll + 49 log
K). Measured numbers: README, "VQ-VAE and its PixelCNN prior".
"""
import ml_collections
from ml_collections import config_dict

from vaejax.configs import common

KNOWN_VARIANTS = ('binarized', 'k512', 'ema', 'mnist', 'runlocal')


def get_config(arg=None):
  variants = common.parse_variants(arg, KNOWN_VARIANTS,
                                   'experiments/vqvae.py')
  binarized = 'binarized' in variants
  ema = 'ema' in variants
  config = ml_collections.ConfigDict()
  steps_per_epoch = 60_000 // 128
  common.training(config, batch_size=128,
                  num_train_steps=10 * steps_per_epoch,
                  eval_every=2 * steps_per_epoch, log_every=200)
  config.data = common.data(variants,
                            'dynamic_binarize' if binarized else 'scale')
  config.model = ml_collections.ConfigDict(dict(
      name='vqvae', channels=(32, 64), code_dim=16,
      num_codes=512 if 'k512' in variants else 128,
      num_residual=1,
      # 'loss' (the codebook loss) or 'ema' (EMA statistics, not gradients).
      codebook_update='ema' if ema else 'loss',
      # Laplace smoothing of the EMA counts.
      ema_epsilon=1e-5,
      conv_impl='auto',
      image_shape=config_dict.placeholder(tuple)))
  config.objective = ml_collections.ConfigDict(dict(
      name='vqvae',
      **common.likelihood('bernoulli' if binarized else 'gaussian'),
      commitment_cost=0.25,
      # EMA codebook only: decay, restart of codes used less than
      # restart_below / K of the positions, initialisation from data.
      codebook_decay=0.99,
      restart_below=0.3 if ema else 0.0,
      init_codebook_from_data=ema,
  ))
  config.optimizer = common.optimizer(learning_rate=1e-3)
  config.eval = common.evaluation(
      # 'iwae' is the family's log_likelihood_bound: here the uniform-prior
      # bound, which needs no samples.
      iwae_samples=1, iwae_chunk=1,
      extras=('iwae', 'codebook_usage'),
      figures=('reconstructions',))
  if 'runlocal' in variants:
    common.runlocal(config)
  return config
