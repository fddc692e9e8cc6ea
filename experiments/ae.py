r"""Deterministic autoencoders on Fashion-MNIST (pixels scaled to [0, 1]).

  python -m vaejax.main --config experiments/ae.py --workdir /tmp/ae

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

from vaejax import experiment_files

KNOWN_VARIANTS = ('loss', 'beta', 'sparse', 'denoising', 'noise',
                  'contractive', 'projections', 'conv', 'linear', 'code',
                  'mnist', 'runlocal')

# Training level of each corruption, and the levels it is evaluated at.
CORRUPTION_LEVELS = {
    'gaussian': (0.3, (0.1, 0.2, 0.3, 0.5)),
    'masking': (0.5, (0.25, 0.5, 0.75)),
    'salt_and_pepper': (0.2, (0.1, 0.2, 0.4)),
}



def _value(variants, name, default):
  """A variant's value, or `default` when given bare (`sparse`) or absent."""
  value = variants.get(name, True)
  return default if value is True else type(default)(value)


def get_config(arg=None):
  variants = experiment_files.parse_variants(arg, KNOWN_VARIANTS,
                                             'experiments/ae.py')
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_devices = config_dict.placeholder(int)

  config.data = experiment_files.image_data_config(variants, 'scale')

  config.model = ml_collections.ConfigDict(dict(
      name='conv_autoencoder' if 'conv' in variants else 'mlp_autoencoder',
      hidden_sizes=() if 'linear' in variants else (512,),
      code_dim=_value(variants, 'code', 32),
      code_activation='relu' if 'sparse' in variants else 'linear',
      channels=(32, 64), hidden_size=256,
      conv_impl='auto',  # how convolutions run; see experiments/vae.py
      image_shape=config_dict.placeholder(tuple)))

  loss = _value(variants, 'loss', 'mse')
  corruption = _value(variants, 'denoising', 'gaussian')
  if corruption not in CORRUPTION_LEVELS:
    raise ValueError(f'Unknown corruption {corruption!r} in '
                     f'experiments/ae.py:{arg}. Known: '
                     f'{sorted(CORRUPTION_LEVELS)}.')
  training_level, eval_levels = CORRUPTION_LEVELS[corruption]
  if 'denoising' not in variants:
    training_level = 0.0
  config.objective = ml_collections.ConfigDict(dict(
      name='autoencoder',
      loss=loss,
      # The likelihood's mean shows the decoder output as an image: the
      # sigmoid of BCE logits, the output itself for the other losses.
      likelihood='bernoulli' if loss == 'bce' else 'gaussian',
      smooth_l1_beta=_value(variants, 'beta', 0.1),
      sparsity_weight=(_value(variants, 'sparse', 1e-2)
                       if 'sparse' in variants else 0.0),
      near_zero_threshold=1e-2,
      corruption=corruption,
      corruption_level=_value(variants, 'noise', training_level),
      contractive_weight=(_value(variants, 'contractive', 1e-3)
                          if 'contractive' in variants else 0.0),
      contractive_estimator=('random_projection' if 'projections' in variants
                             else 'exact'),
      num_projections=_value(variants, 'projections', 1),
  ))

  config.optimizer = ml_collections.ConfigDict(dict(
      name='adam', learning_rate=1e-3, schedule='constant', warmup_steps=0,
      grad_clip_norm=0.0, b1=0.9, b2=0.999))

  config.batch_size = 128
  steps_per_epoch = 60_000 // config.batch_size
  config.num_train_steps = 5 * steps_per_epoch
  config.steps_per_dispatch = 100
  config.log_every = 500
  config.eval_every = steps_per_epoch
  config.checkpoint_every = 2000
  config.checkpoints_to_keep = 3

  config.eval = ml_collections.ConfigDict(dict(
      split='test', batch_size=500, quick_examples=2000,
      max_examples=config_dict.placeholder(int),
      denoising_levels=eval_levels,
      probe_train_examples=10_000,
      extras=('diagnostics', 'denoising', 'linear_probe'),
      figures=('reconstructions', 'interpolations', 'denoising')))

  if 'runlocal' in variants:
    config.num_train_steps = 20
    config.steps_per_dispatch = 10
    config.log_every = 10
    config.eval_every = 0
    config.checkpoint_every = 10
    config.eval.max_examples = 1000
    config.eval.batch_size = 200
    config.eval.probe_train_examples = 1000
  return config
