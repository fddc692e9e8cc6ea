r"""Variational autoencoder on (dynamically binarised) Fashion-MNIST.

  python -m vaejax.main --config experiments/vae.py --workdir /tmp/vae

Variants, comma-separated after a colon and combinable:
  mnist        MNIST instead of Fashion-MNIST
  conv         convolutional encoder/decoder instead of the 784-400-20 MLP
  iwae         train the IWAE bound with k = 5
  beta=<f>     beta-VAE weight on the KL term
  latent=<n>   latent dimension (latent=2 also draws the 2-D manifold)
  runlocal     a few steps on a small IWAE budget: finishes in seconds

  python -m vaejax.main --config experiments/vae.py:conv,beta=4 --workdir W
  python -m vaejax.main --config experiments/vae.py:runlocal \
      --config.num_train_steps=50 --workdir W

The default (MLP 784-400-20, Bernoulli, Adam 1e-3, batch 128, 50 epochs)
reaches the numbers in the README's experiments table.
"""
import ml_collections
from ml_collections import config_dict

from vaejax import experiment_files



KNOWN_VARIANTS = ('mnist', 'conv', 'iwae', 'beta', 'latent', 'runlocal')


def get_config(arg=None):
  variants = experiment_files.parse_variants(arg, KNOWN_VARIANTS,
                                             'experiments/vae.py')
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_devices = config_dict.placeholder(int)

  config.data = experiment_files.image_data_config(
      variants, 'dynamic_binarize',
      # False: the host gathers batches (with prefetch) instead of keeping
      # the training set on device; for data sets that do not fit.
      on_device=True)

  config.model = ml_collections.ConfigDict(dict(
      name='mlp_vae', hidden_sizes=(400,), latent_dim=20,
      channels=(32, 64), hidden_size=256,
      # 'bfloat16' computes the layers in bfloat16 (for GPUs); parameters,
      # optimiser state and the loss stay float32.
      dtype='float32',
      # Convolutions of the conv model: 'polyphase' (stride-1 rewrites,
      # fast on CPU; vaejax/models/layers.py), 'lax' (XLA's own) or 'auto'
      # (polyphase on CPU only). Same parameters and numbers either way.
      conv_impl='auto',
      image_shape=config_dict.placeholder(tuple)))
  if 'conv' in variants:
    config.model.name = 'conv_vae'
  if 'latent' in variants:
    config.model.latent_dim = int(variants['latent'])

  config.objective = ml_collections.ConfigDict(dict(
      name='iwae' if 'iwae' in variants else 'elbo',
      likelihood='bernoulli',
      likelihood_scale=0.1,
      min_log_scale=-7.0,
      beta=float(variants.get('beta', 1.0)),
      kl_warmup_steps=0,
      free_bits=0.0,
      num_samples=1,
      iwae_samples=5,
  ))

  config.optimizer = ml_collections.ConfigDict(dict(
      name='adam', learning_rate=1e-3, schedule='constant', warmup_steps=0,
      grad_clip_norm=0.0, b1=0.9, b2=0.999,
      # > 0: skip steps whose gradient norm is above this (VDVAE); counted
      # as train/skipped_updates.
      skip_update_above_grad_norm=0.0))

  config.batch_size = 128
  steps_per_epoch = 60_000 // config.batch_size
  config.num_train_steps = 50 * steps_per_epoch
  config.steps_per_dispatch = 100
  config.log_every = 500
  config.eval_every = 5 * steps_per_epoch
  config.checkpoint_every = 2000
  config.checkpoints_to_keep = 3

  config.eval = ml_collections.ConfigDict(dict(
      split='test', batch_size=500, quick_examples=2000,
      max_examples=config_dict.placeholder(int),
      iwae_samples=5000, iwae_chunk=250, iwae_batch_size=100,
      extras=('iwae', 'diagnostics', 'linear_probe', 'clustering'),
      figures=('reconstructions', 'samples', 'interpolations', 'manifold',
               'traversals', 'pca_scatter'),
      probe_train_examples=10000, pixel_pca_dims=50, traversal_dims=8,
      scatter_examples=2000))

  if 'runlocal' in variants:
    config.num_train_steps = 20
    config.steps_per_dispatch = 10
    config.log_every = 10
    config.eval_every = 0
    config.checkpoint_every = 10
    config.eval.max_examples = 1000
    config.eval.iwae_samples = 50
    config.eval.iwae_chunk = 25
    config.eval.batch_size = 200
    config.eval.iwae_batch_size = 100
    # The probes compile for several seconds: runlocal leaves them to
    # `python -m vaejax.evaluate --extras=...`.
    config.eval.extras = ('iwae', 'diagnostics')
    config.eval.probe_train_examples = 1000
    config.eval.scatter_examples = 1000
  return config
