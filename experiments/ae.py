r"""Deterministic autoencoders on Fashion-MNIST (pixels scaled to [0, 1]).

  python -m vaejax.main --config experiments/ae.py --workdir workdirs/ae

Variants, comma-separated after a colon and combinable:
  loss=<name>          reconstruction loss: mse (default), mae, smooth_l1, bce
  beta=<f>             Smooth-L1 threshold (default 0.1)
  sparse[=<lambda>]    L1 penalty lambda * mean|z| (default 0.01), ReLU code
  denoising[=<name>]   train on corrupted inputs: gaussian (default, sigma 0.3),
                       masking (nu 0.5) or salt_and_pepper (0.2)
  noise=<level>        the training corruption level
  contractive[=<lambda>]  penalty lambda * ||dz/dx||_F^2 (default 0.001),
                       with the exact Jacobian
  projections=<m>      estimate ||dz/dx||_F^2 with m random projections instead
  conv                 convolutional encoder/decoder instead of the MLP
  linear               one linear layer each way (learns the PCA subspace)
  code=<n>             code dimension (default 32)
  mnist                MNIST instead of Fashion-MNIST
  runlocal             a few steps: finishes in seconds on a CPU

  python -m vaejax.main --config experiments/ae.py:loss=smooth_l1,beta=0.5 \
      --workdir W
  python -m vaejax.main --config experiments/ae.py:denoising=masking,runlocal \
      --workdir W

Every run reports on the test set the reconstruction MSE
(`reconstruction_mse` on clean inputs; `image_mse` on the objective's input,
noisy for a denoising AE, of the image shown in [0, 1]), the PSNR of
reconstructions and of noisy / denoised images at the levels of
`config.eval.denoising_levels`, the code's sparsity, the linear-probe accuracy
of the codes, and draws reconstructions, interpolations and noisy / denoised /
clean grids. The default (MLP 784-512-32, MSE, Adam 1e-3, batch
128, 5 epochs, about 2 minutes on a 2-core CPU) reaches a test reconstruction
MSE of 0.011 (20.6 dB) and a probe accuracy of 0.81; the denoising variant
lifts Gaussian-noise (sigma 0.3) test images from 12.8 dB to 19.1 dB. The
exact contractive penalty costs d = 32 backward passes per step (about 10
minutes on that CPU); `contractive,projections=1` estimates it for the price
of one forward-mode pass. The README's table lists every variant.
"""
import ml_collections
from ml_collections import config_dict

from vaejax import errors
from vaejax.configs import common

KNOWN_VARIANTS = ('loss', 'beta', 'sparse', 'denoising', 'noise',
                  'contractive', 'projections', 'conv', 'linear', 'code',
                  'mnist', 'runlocal')

# Training level of each corruption, and the levels it is evaluated at.
CORRUPTION_LEVELS = {
    'gaussian': (0.3, (0.1, 0.2, 0.3, 0.5)),
    'masking': (0.5, (0.25, 0.5, 0.75)),
    'salt_and_pepper': (0.2, (0.1, 0.2, 0.4)),
}


def get_config(arg=None):
  variants = common.parse_variants(arg, KNOWN_VARIANTS, 'experiments/ae.py')

  def value(name, default):
    return common.variant_value(variants, name, default)

  config = ml_collections.ConfigDict()
  steps_per_epoch = 60_000 // 128
  common.training(config, batch_size=128, num_train_steps=5 * steps_per_epoch,
                  eval_every=steps_per_epoch)
  config.data = common.data(variants, 'scale')

  config.model = ml_collections.ConfigDict(dict(
      name='conv_autoencoder' if 'conv' in variants else 'mlp_autoencoder',
      hidden_sizes=() if 'linear' in variants else (512,),
      code_dim=value('code', 32),
      code_activation='relu' if 'sparse' in variants else 'linear',
      channels=(32, 64), hidden_size=256,
      conv_impl='auto',  # how convolutions run; see experiments/vae.py
      image_shape=config_dict.placeholder(tuple)))

  loss = value('loss', 'mse')
  corruption = value('denoising', 'gaussian')
  if corruption not in CORRUPTION_LEVELS:
    raise errors.ConfigError(
        f'Unknown corruption {corruption!r} in experiments/ae.py:{arg}. '
        f'Known: {", ".join(sorted(CORRUPTION_LEVELS))}.')
  training_level, eval_levels = CORRUPTION_LEVELS[corruption]
  if 'denoising' not in variants:
    training_level = 0.0
  config.objective = ml_collections.ConfigDict(dict(
      name='autoencoder',
      loss=loss,
      # The likelihood's mean shows the decoder output as an image: the
      # sigmoid of BCE logits, the output itself for the other losses.
      **common.likelihood('bernoulli' if loss == 'bce' else 'gaussian'),
      smooth_l1_beta=value('beta', 0.1),
      sparsity_weight=value('sparse', 1e-2) if 'sparse' in variants else 0.0,
      near_zero_threshold=1e-2,
      corruption=corruption,
      corruption_level=value('noise', training_level),
      contractive_weight=(value('contractive', 1e-3)
                          if 'contractive' in variants else 0.0),
      contractive_estimator=('random_projection' if 'projections' in variants
                             else 'exact'),
      num_projections=value('projections', 1),
  ))
  config.optimizer = common.optimizer()
  config.eval = common.evaluation(
      denoising_levels=eval_levels,
      extras=('diagnostics', 'denoising', 'linear_probe'),
      figures=('reconstructions', 'interpolations', 'denoising'))

  if 'runlocal' in variants:
    common.runlocal(config)
  return config
