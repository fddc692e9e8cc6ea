"""Image classifiers: a small CNN and an MLP, and their family.

A classifier maps images [B, H, W, C] to class logits [B, K]. Its network has
two parts, so that its penultimate layer is a feature space of its own (the
sample-quality metrics of `vaejax.evaluators.sample_quality` compare images
there, as FID does with Inception's pool features):

  features(x) -> [B, D]                the penultimate layer
  __call__(x, dropout_keys=None) -> [B, K]
      logits of the features; with [B] keys, dropout of the features, each
      example's mask drawn from its own key (so the numbers do not depend on
      how a batch is split over devices).

Any module with this `__call__` trains with the `cross_entropy` objective
(`vaejax.objectives.classifier`), e.g. a head on a pretrained encoder.

CNN: stages of 3x3 GELU convolutions at one resolution followed by 2x2 max
pooling (VGG-style, Simonyan & Zisserman 2015; an odd size is floored, 7 ->
3), then a GELU dense layer (the features) and the linear logits.
"""
from typing import Sequence

import flax.linen as nn

from vaejax import errors
from vaejax import prng
from vaejax.models import convolutions
from vaejax.models import family
from vaejax.models import mae
from vaejax.models import vae


def logits_of_features(module, x, dropout_keys, **feature_args):
  """A classifier's `__call__`: its features (`module.features(x,
  **feature_args)`), dropped out when there are keys, then its `logits`
  layer."""
  h = module.features(x, **feature_args)
  if dropout_keys is not None:
    h = mae.dropout(dropout_keys, h, module.dropout_rate)
  return module.logits(h)


class CNNClassifier(nn.Module):
  """[conv3x3 GELU] * convs_per_stage -> maxpool 2x2, per `channels` entry;
  flatten -> dense GELU (the features) -> dropout -> logits."""
  channels: Sequence[int]
  convs_per_stage: int
  hidden_size: int
  num_classes: int
  dropout_rate: float = 0.0
  conv_impl: str = 'auto'

  def setup(self):
    self.convs = [
        [convolutions.conv(c, (3, 3), impl=self.conv_impl,
                           name=f'conv_{i}_{j}')
         for j in range(self.convs_per_stage)]
        for i, c in enumerate(self.channels)]
    self.hidden = nn.Dense(self.hidden_size, name='hidden')
    self.logits = nn.Dense(self.num_classes, name='logits')

  def features(self, x):
    h = x
    for stage in self.convs:
      for layer in stage:
        h = nn.gelu(layer(h))
      h = nn.max_pool(h, (2, 2), (2, 2))
    return nn.gelu(self.hidden(h.reshape(h.shape[0], -1)))

  def __call__(self, x, dropout_keys=None):
    return logits_of_features(self, x, dropout_keys)


class MLPClassifier(nn.Module):
  """Flatten -> ReLU MLP (its last hidden layer: the features) -> dropout ->
  logits."""
  hidden_sizes: Sequence[int]
  num_classes: int
  dropout_rate: float = 0.0

  def setup(self):
    self.hidden = [nn.Dense(size, name=f'hidden_{i}')
                   for i, size in enumerate(self.hidden_sizes)]
    self.logits = nn.Dense(self.num_classes, name='logits')

  def features(self, x):
    h = x.reshape(x.shape[0], -1)
    for layer in self.hidden:
      h = nn.relu(layer(h))
    return h

  def __call__(self, x, dropout_keys=None):
    return logits_of_features(self, x, dropout_keys)


class ViTClassifier(nn.Module):
  """A ViT (`mae.ViTEncoder`, parameters under `encoder`, the same as a
  masked autoencoder's, so `config.init_from` can start it from one) on
  every patch -> mean token or class token (the features) -> dropout ->
  logits. With the encoder's `drop_path_rate` > 0, training (keys given)
  also drops its blocks' branches: each example's key splits into a
  stochastic-depth key and a dropout key."""
  encoder: nn.Module
  num_classes: int
  dropout_rate: float = 0.0

  def setup(self):
    self.logits = nn.Dense(self.num_classes, name='logits')

  def features(self, x, drop_path_keys=None):
    return mae.pooled(self.encoder(x, drop_path_keys=drop_path_keys),
                      self.encoder.class_token)

  def __call__(self, x, dropout_keys=None):
    drop_path_keys = None
    if dropout_keys is not None and self.encoder.drop_path_rate:
      drop_path_keys, dropout_keys = prng.split_per_example(dropout_keys, 2)
    return logits_of_features(self, x, dropout_keys,
                              drop_path_keys=drop_path_keys)


class ClassifierFamily(family.Family):
  """The contract for a classifier: class logits and its penultimate
  features."""
  LACKING = {
      'code_grid': 'a classifier has no discrete codes',
      'decode_code_grid': 'a classifier has no decoder',
      'code_log_prob': 'a classifier has no prior',
      'reconstruct': 'a classifier does not reconstruct its inputs',
      'reconstruction_nll': 'a classifier does not reconstruct its inputs',
      'sample': 'a classifier models p(y | x), not p(x): nothing to sample',
      'log_likelihood_bound': 'a classifier defines no p(x)',
      'encode': 'a classifier has no decodable code',
      'decode': 'a classifier has no decoder',
      'posterior_kl_per_dim': 'a classifier has no posterior',
      'prior_grid': 'a classifier has no prior',
      'assign_clusters': 'a classifier is not a mixture model',
      'positive_probability': ('a softmax classifier gives class logits '
                               '(classify), not the mixture classifier\'s '
                               'binary P(Y=1 | x)'),
  }

  def represent(self, variables, x):
    """The penultimate layer [B, D]."""
    return self.model.apply(variables, x, method=self.model.features)

  def classify(self, variables, x):
    """Class logits [B, K] (no dropout)."""
    return self.model.apply(variables, x)


def _check_classes(config):
  if config.num_classes < 2:
    raise errors.ConfigError(
        f'config.model.num_classes={config.num_classes}: a classifier needs '
        f'at least 2 classes (10 for Fashion-MNIST).')
  if not 0 <= config.dropout_rate < 1:
    raise errors.ConfigError(
        f'config.model.dropout_rate={config.dropout_rate} must be in [0, 1).')


def _check_no_drop_path(config, name):
  if config.drop_path_rate:
    raise errors.ConfigError(
        f'config.model.drop_path_rate={config.drop_path_rate} drops '
        f'transformer blocks, and {name} has none: set it to 0, or use the '
        f'ViT (experiments/classifier.py:vit,drop_path=<r>).')


def cnn_classifier(config, image_shape, likelihood):
  _check_classes(config)
  _check_no_drop_path(config, 'cnn_classifier')
  channels = tuple(config.channels)
  scale = 2 ** len(channels)
  if len(image_shape) != 3 or min(image_shape[:2]) < scale:
    raise errors.ConfigError(
        f'cnn_classifier with {len(channels)} pooling stages needs images '
        f'[H, W, C] of at least {scale} x {scale} pixels, but the data has '
        f'images of shape {tuple(image_shape)}. Use fewer entries in '
        f'config.model.channels, resize with config.data.image_size, or the '
        f'mlp_classifier model.')
  model = CNNClassifier(
      channels=channels, convs_per_stage=config.convs_per_stage,
      hidden_size=config.hidden_size, num_classes=config.num_classes,
      dropout_rate=config.dropout_rate, conv_impl=vae.conv_impl(config))
  return ClassifierFamily(model, likelihood, 'cnn_classifier')


def mlp_classifier(config, image_shape, likelihood):
  del image_shape
  _check_classes(config)
  _check_no_drop_path(config, 'mlp_classifier')
  model = MLPClassifier(hidden_sizes=tuple(config.hidden_sizes),
                        num_classes=config.num_classes,
                        dropout_rate=config.dropout_rate)
  return ClassifierFamily(model, likelihood, 'mlp_classifier')


def vit_classifier(config, image_shape, likelihood):
  """A ViT classifier of the sizes of `experiments/mae.py`'s encoder keys
  (patch_size, embed_dim, depth, num_heads, class_token)."""
  _check_classes(config)
  mae.patch_grid(image_shape, config.patch_size)
  if config.embed_dim % config.num_heads:
    raise errors.ConfigError(
        f'config.model.num_heads={config.num_heads} does not divide '
        f'config.model.embed_dim={config.embed_dim}: choose a divisor.')
  encoder = mae.ViTEncoder(
      tuple(image_shape), config.patch_size, config.embed_dim, config.depth,
      config.num_heads, config.class_token,
      drop_path_rate=config.drop_path_rate)
  model = ViTClassifier(encoder=encoder, num_classes=config.num_classes,
                        dropout_rate=config.dropout_rate)
  return ClassifierFamily(model, likelihood, 'vit_classifier')
