"""Model registry: `config.model.name` -> builder(model_config, image_shape,
likelihood) -> a `family.Family` (the flax module and its abilities)."""
from vaejax import errors
from vaejax import registry
from vaejax.models import autoencoder
from vaejax.models import classifier
from vaejax.models import family
from vaejax.models import hvae
from vaejax.models import mae
from vaejax.models import mixture
from vaejax.models import pixelcnn_prior
from vaejax.models import vae
from vaejax.models import vqvae

MODELS = registry.Registry('model', {
    'mlp_vae': vae.mlp_vae,
    'conv_vae': vae.conv_vae,
    'mlp_hvae': hvae.mlp_hvae,
    'conv_hvae': hvae.conv_hvae,
    'gaussian_mixture': mixture.gaussian_mixture,
    'mixture_classifier': mixture.mixture_classifier,
    'mlp_autoencoder': autoencoder.mlp_autoencoder,
    'conv_autoencoder': autoencoder.conv_autoencoder,
    'mae': mae.mae,
    'cnn_classifier': classifier.cnn_classifier,
    'mlp_classifier': classifier.mlp_classifier,
    'vit_classifier': classifier.vit_classifier,
    'vqvae': vqvae.vqvae,
    'pixelcnn_prior': pixelcnn_prior.pixelcnn_prior,
}, 'config.model.name')


def build_family(config, image_shape, likelihood):
  """The family named by `config.model.name`, built for `image_shape`.

  Raises an error naming both shapes when the experiment fixes an image shape
  (`config.model.image_shape`) that differs from the
  data's.
  """
  builder = MODELS.get(config.model.name)
  expected = config.model.image_shape
  if expected and tuple(expected) != tuple(image_shape):
    raise errors.ConfigError(
        f'Model {config.model.name!r} is configured for images of shape '
        f'{tuple(expected)} but the data {config.data.name!r} has images of '
        f'shape {tuple(image_shape)}. Change config.model.image_shape or the '
        f'dataset.')
  built = builder(config.model, tuple(image_shape), likelihood)
  family.check_abilities(built)
  return built
