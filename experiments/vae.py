r"""Variational autoencoder on (dynamically binarised) Fashion-MNIST.

  python -m vaejax.main --config experiments/vae.py --workdir workdirs/vae

Variants, comma-separated after a colon and combinable:
  mnist        MNIST instead of Fashion-MNIST
  conv         convolutional encoder/decoder instead of the 784-400-20 MLP
  iwae         train the IWAE bound with k = 5
  beta=<f>     beta-VAE weight on the KL term
  latent=<n>   latent dimension (latent=2 also draws the 2-D manifold)
  paper        the protocol of the published Fashion-MNIST density table
               (Tomczak & Welling 2018's VampPrior code, as used by the
               Exemplar VAE paper): gated MLP 300-300, 40 latents,
               log-variance clipped to [-6, 2], Adam 5e-4, batch 100, KL
               warm-up over 100 epochs, 50k/10k train/validation split,
               early stopping on the validation loss with patience 50 epochs
               (at most 2000 epochs)
  ema=<f>      evaluate an exponential moving average of the parameters
               with this decay (e.g. ema=0.999)
  runlocal     a few steps on a small IWAE budget: finishes in seconds

  python -m vaejax.main --config experiments/vae.py:conv,beta=4 --workdir W
  python -m vaejax.main --config experiments/vae.py:runlocal \
      --config.num_train_steps=50 --workdir W

The default (MLP 784-400-20, Bernoulli, Adam 1e-3, batch 128, 50 epochs)
reaches the numbers in the README's experiments table.
"""
import ml_collections
from ml_collections import config_dict

from vaejax.configs import common

KNOWN_VARIANTS = ('mnist', 'conv', 'iwae', 'beta', 'latent', 'paper', 'ema',
                  'runlocal')


def get_config(arg=None):
  variants = common.parse_variants(arg, KNOWN_VARIANTS, 'experiments/vae.py')
  config = ml_collections.ConfigDict()
  steps_per_epoch = 60_000 // 128
  common.training(config, batch_size=128, num_train_steps=50 * steps_per_epoch,
                  eval_every=5 * steps_per_epoch)
  config.data = common.data(variants, 'dynamic_binarize')

  config.model = ml_collections.ConfigDict(dict(
      name='conv_vae' if 'conv' in variants else 'mlp_vae',
      hidden_sizes=(400,),
      latent_dim=common.variant_value(variants, 'latent', 20),
      channels=(32, 64), hidden_size=256,
      # 'bfloat16' computes the layers in bfloat16 (for GPUs); parameters,
      # optimiser state and the loss stay float32.
      dtype='float32',
      # Convolutions of the conv model: 'matmul' (each one matmul over
      # gathered patches, fast on CPU; vaejax/models/convolutions.py), 'lax'
      # (XLA's own) or 'auto' (matmul on CPU only). Same parameters and
      # numbers either way.
      conv_impl='auto',
      # MLP layers h * sigmoid(gate) instead of ReLU (the `paper` variant).
      gated=False,
      # (low, high): the posterior log-variance is clipped to it.
      logvar_range=config_dict.placeholder(tuple),
      image_shape=config_dict.placeholder(tuple)))

  config.objective = ml_collections.ConfigDict(dict(
      name='iwae' if 'iwae' in variants else 'elbo',
      **common.likelihood('bernoulli'),
      beta=common.variant_value(variants, 'beta', 1.0),
      kl_warmup_steps=0,
      free_bits=0.0,
      num_samples=1,
      iwae_samples=5,
  ))
  config.optimizer = common.optimizer()
  config.eval = common.evaluation(
      iwae_batch_size=100,
      # Opt-in extras: 'sample_quality' and 'sample_quality_reference' (FID,
      # KID, precision / recall in the features of the classifier in
      # eval.sample_quality_classifier_workdir, trained by
      # experiments/classifier.py): python -m vaejax.evaluate --workdir W
      # --extras=sample_quality,sample_quality_reference
      extras=('iwae', 'diagnostics', 'linear_probe', 'clustering'),
      figures=('reconstructions', 'samples', 'interpolations', 'manifold',
               'traversals', 'pca_scatter'))

  if 'paper' in variants:
    paper_protocol(config, variants)
  if 'ema' in variants:
    config.ema_decay = common.variant_value(variants, 'ema', 0.999)

  if 'runlocal' in variants:
    common.runlocal(config)
    config.eval.iwae_samples = 50
    config.eval.iwae_chunk = 25
    # The probes compile for several seconds: runlocal leaves them to
    # `python -m vaejax.evaluate --extras=...`.
    config.eval.extras = ('iwae', 'diagnostics')
    config.eval.scatter_examples = 1000
    if config.early_stopping_patience:  # `paper`: early stopping still runs.
      config.eval_every = 10
      config.eval.quick_examples = 1000
  return config


def paper_protocol(config, variants):
  """The protocol behind the published binarised Fashion-MNIST table (VAE
  228.70 nats): see the module docstring."""
  common.paper_protocol(config)
  config.model.hidden_sizes = (300, 300)
  config.model.latent_dim = common.variant_value(variants, 'latent', 40)
  config.model.gated = True
  config.model.logvar_range = (-6.0, 2.0)
