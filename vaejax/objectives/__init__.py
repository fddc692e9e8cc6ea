"""Objective registry: `config.objective.name` -> factory(objective_config).

A factory returns a loss function with the shared signature documented in
`vaejax.objectives.vae`.
"""
from vaejax import registry
from vaejax.objectives import vae

OBJECTIVES = registry.Registry('objective', {
    'elbo': vae.make_elbo,
    'iwae': vae.make_iwae,
}, 'config.objective.name')


def get_objective(config):
  """The loss function named by `config.objective.name`."""
  return OBJECTIVES.get(config.objective.name)(config.objective)
