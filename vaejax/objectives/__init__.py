"""Objective registry: `config.objective.name` -> factory(objective_config).

A factory returns a loss function with the shared signature documented in
`vaejax.objectives.vae`.
"""
from vaejax import registry
from vaejax.objectives import autoencoder
from vaejax.objectives import autoregressive
from vaejax.objectives import classifier
from vaejax.objectives import hvae
from vaejax.objectives import mae
from vaejax.objectives import mixture
from vaejax.objectives import vae
from vaejax.objectives import vqvae

OBJECTIVES = registry.Registry('objective', {
    'elbo': vae.make_elbo,
    'iwae': vae.make_iwae,
    'hvae_elbo': hvae.make_hvae_elbo,
    'em_gmm': mixture.make_em_gmm,
    'em_mixture_classifier': mixture.make_em_mixture_classifier,
    'autoencoder': autoencoder.make_autoencoder,
    'masked_patch_mse': mae.make_masked_patch_mse,
    'cross_entropy': classifier.make_cross_entropy,
    'vqvae': vqvae.make_vqvae,
    'autoregressive': autoregressive.make_autoregressive,
}, 'config.objective.name')


def get_objective(config):
  """The loss function named by `config.objective.name`."""
  return OBJECTIVES.get(config.objective.name)(config.objective)
