r"""Top-down hierarchical VAE on dynamically binarised Fashion-MNIST.

  python -m vaejax.main --config experiments/hvae.py --workdir workdirs/hvae

The default is the two-level MLP HVAE of the published table (HVAE 227.37
nats, test IWAE k = 5000): gated MLP 300-300 bottom-up and decoder, a
top-down state of 300 units, groups z_top and z_bottom of 40 latents each,
log-variances clipped to [-6, 2], trained with the protocol of the table
(`configs.common.paper_protocol`: batch 100, Adam 5e-4, KL warm-up over 100
epochs, 50k/10k split, early stopping with patience 50 epochs). The final
evaluation is the IWAE estimate with k = 5000 on the test split.

Variants, comma-separated after a colon and combinable:
  conv         convolutional top-down VAE (VDVAE blocks): 2 groups of 4
               channels at 7x7, then 2 at 14x14, width 64, with gradient
               clipping and update skipping (VDVAE); hours on a 2-core CPU
  free_bits=<f>  free bits per latent element (nats)
  ema=<f>      evaluate an exponential moving average of the parameters
  runlocal     a few steps on a small IWAE budget: finishes in seconds

  python -m vaejax.main --config experiments/hvae.py:conv --workdir W
  python -m vaejax.main --config experiments/hvae.py:runlocal --workdir W
"""
import ml_collections
from ml_collections import config_dict

from vaejax.configs import common

KNOWN_VARIANTS = ('conv', 'free_bits', 'ema', 'runlocal')


def get_config(arg=None):
  variants = common.parse_variants(arg, KNOWN_VARIANTS, 'experiments/hvae.py')
  config = ml_collections.ConfigDict()
  common.training(config, batch_size=100, num_train_steps=1000,
                  eval_every=500)
  config.data = common.data(variants, 'dynamic_binarize')

  config.model = ml_collections.ConfigDict(dict(
      name='conv_hvae' if 'conv' in variants else 'mlp_hvae',
      # mlp_hvae: bottom-up layers (the decoder's, reversed; the top-down
      # state has the last one's width) and the groups' sizes, top first.
      hidden_sizes=(300, 300),
      latent_dims=(40, 40),
      gated=True,
      # conv_hvae: channels of the state and bottom-up features, of the
      # blocks' bottlenecks, of each group's latents; groups at 1/4 and at
      # 1/2 of the image's resolution.
      width=64, bottleneck=32, latent_channels=4, groups_per_scale=(2, 2),
      # (low, high): prior and posterior log-variances are clipped to it.
      logvar_range=(-6.0, 2.0),
      dtype='float32', conv_impl='auto',
      image_shape=config_dict.placeholder(tuple)))

  config.objective = ml_collections.ConfigDict(dict(
      name='hvae_elbo',
      **common.likelihood('bernoulli'),
      beta=1.0,
      kl_warmup_steps=0,
      free_bits=common.variant_value(variants, 'free_bits', 0.0),
      num_samples=1,
  ))
  config.optimizer = common.optimizer()
  config.eval = common.evaluation(
      iwae_batch_size=100, extras=('iwae', 'diagnostics'),
      figures=('reconstructions', 'samples'))
  common.paper_protocol(config)
  if 'conv' in variants:
    config.optimizer.grad_clip_norm = 200.0
    config.optimizer.skip_update_above_grad_norm = 1000.0
  if 'ema' in variants:
    config.ema_decay = common.variant_value(variants, 'ema', 0.999)

  if 'runlocal' in variants:
    common.runlocal(config)
    config.data.validation_size = 0
    config.early_stopping_patience = 0
    config.eval.iwae_samples = 50
    config.eval.iwae_chunk = 25
    config.eval.scatter_examples = 1000
  return config
