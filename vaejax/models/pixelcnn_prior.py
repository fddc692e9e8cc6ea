"""A PixelCNN prior over the code grids of a VQ-VAE, and its family.

The data are the integer code grids [N, h, w] of a trained VQ-VAE
(`vaejax.stages` 'vq_codes'; the 'features' transform gives them as float32,
exact for integers below 2^24). The network is `pixelcnn.GatedPixelCNN`:
logits [B, h, w, K], each from the codes before it in raster order (and the
label, when class-conditional).

`sample` draws a grid by ancestral sampling, one position at a time inside
one jitted `lax.fori_loop` (h * w network evaluations), and decodes it with
the first stage's decoder (`decode_code_grid` of the VQ-VAE in
`config.data.features_workdir`), so the sample figures and sample-quality
metrics work on this family unchanged.

Reference: van den Oord, Vinyals, Kavukcuoglu 2017, section 3.3 (a
PixelCNN prior over the latents); van den Oord et al. 2016 (gated PixelCNN).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from vaejax import errors
from vaejax.models import family
from vaejax.models import pixelcnn
from vaejax.models import vae
from vaejax.objectives import autoregressive


class CodePrior(nn.Module):
  """Codes [B, h, w] (float or int) -> logits [B, h, w, num_codes]."""
  network: nn.Module

  def __call__(self, codes, labels=None):
    if self.network.num_classes is not None and labels is None:
      # Initialisation sees no labels; class 0 shapes the parameters.
      labels = jnp.zeros((codes.shape[0],), jnp.int32)
    return self.network(codes.astype(jnp.int32), labels)


def sample_codes(logits_fn, key, num, grid_shape):
  """Ancestral sampling of `num` grids [num, h, w] from logits_fn(codes) ->
  logits [num, h, w, K], causal in raster order.

  Position i is drawn from the logits of the grid drawn so far; positions
  after i do not affect them, so one full evaluation per position gives
  exact samples. Each position has its own key: fold_in(key, i).
  """
  height, width = grid_shape

  def draw(i, codes):
    row, col = i // width, i % width
    logits = logits_fn(codes)[:, row, col]
    drawn = jax.random.categorical(jax.random.fold_in(key, i), logits)
    return codes.at[:, row, col].set(drawn.astype(codes.dtype))

  return lax.fori_loop(0, height * width, draw,
                       jnp.zeros((num, height, width), jnp.int32))


class PixelCNNPriorFamily(family.Family):
  """The contract for a prior over code grids: samples (decoded by the
  first stage), log p(codes)."""
  LACKING = {
      'classify': 'a prior over codes is not a classifier',
      'represent': 'a prior over codes learns no representation of images',
      'reconstruct': 'a prior does not reconstruct (its first stage does)',
      'reconstruction_nll': 'a prior does not reconstruct (its first stage '
                            'does)',
      'log_likelihood_bound': 'its inputs are code grids: the bound on '
                              'log p(x) is the evaluation two_stage_bound',
      'encode': 'a prior over codes has no encoder',
      'decode': 'a prior over codes has no continuous code',
      'posterior_kl_per_dim': 'a prior has no posterior',
      'prior_grid': 'the prior is over discrete code grids',
      'code_grid': 'a prior does not encode images (its first stage does)',
      'assign_clusters': 'a PixelCNN prior is not a mixture model',
      'positive_probability': 'a PixelCNN prior is not a classifier',
  }

  def __init__(self, model, likelihood, name, grid_shape, num_classes):
    super().__init__(model, likelihood, name)
    self.grid_shape = grid_shape
    self.num_classes = num_classes

  def lacking(self, ability):
    if ability in ('sample', 'decode_code_grid') and not self._decoder():
      return ('no first stage with a decoder of code grids (set '
              'config.data.features="vq_codes" and features_workdir)')
    return super().lacking(ability)

  def _decoder(self):
    trained = self.first_stage.trained if self.first_stage else None
    if trained is None or not trained.exp.family.has('decode_code_grid'):
      return None
    return trained

  def decode_code_grid(self, variables, codes):
    del variables  # The prior's own; the decoder is the first stage's.
    trained = self._decoder()
    return trained.exp.family.decode_code_grid(trained.variables, codes)

  def sample_labels(self, num):
    """The labels of `num` class-conditional samples: 0, 1, ..., K-1, 0, ..."""
    if self.num_classes is None:
      return None
    return jnp.arange(num) % self.num_classes

  def sample_codes(self, variables, key, num):
    labels = self.sample_labels(num)
    return sample_codes(
        lambda codes: self.model.apply(variables, codes, labels), key, num,
        self.grid_shape)

  def sample(self, variables, key, num):
    return self.decode_code_grid(variables,
                                 self.sample_codes(variables, key, num))

  def code_log_prob(self, variables, codes, labels=None):
    logits = self.model.apply(variables, codes, labels)
    return autoregressive.categorical_log_prob(logits, codes)


def pixelcnn_prior(config, image_shape, likelihood):
  if len(image_shape) != 2:
    raise errors.ConfigError(
        f'pixelcnn_prior models code grids [N, h, w], but the data has '
        f'examples of shape {tuple(image_shape)}. Set '
        f'config.data.features="vq_codes", config.data.features_workdir=<a '
        f'VQ-VAE workdir> and config.data.transform="features".')
  num_classes = config.num_classes or None
  network = pixelcnn.GatedPixelCNN(
      num_codes=config.num_codes, features=config.feature_channels,
      num_layers=config.num_layers, kernel_size=config.kernel_size,
      first_kernel_size=config.first_kernel_size,
      output_features=config.output_features, num_classes=num_classes,
      conv_impl=vae.conv_impl(config))
  return PixelCNNPriorFamily(CodePrior(network), likelihood, 'pixelcnn_prior',
                             tuple(image_shape), num_classes)
