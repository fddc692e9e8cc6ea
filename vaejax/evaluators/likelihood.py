"""The log-likelihood estimate of a generative family (`config.eval.extras`
'iwae'): the family's `log_likelihood_bound`, for a VAE the IWAE estimate
L_k with k = `iwae_samples` (Burda et al., 2016), computed in chunks of
`iwae_chunk` samples (`vaejax.objectives.vae.iwae_log_likelihood`).

Reports `nll_iwae` (nats per example) and, where -log p is a code length,
bits per dimension.
"""
import numpy as np

from vaejax.evaluators import spec


def iwae_metrics(evaluator, variables, images, settings):
  """IWAE estimate of -log p(x) with k = settings.iwae_samples."""
  family = evaluator.family

  def log_likelihood(variables, images, positions):
    x, objective_keys = evaluator.inputs(images, positions)
    return family.log_likelihood_bound(variables, x, objective_keys,
                                       settings.iwae_samples,
                                       settings.iwae_chunk)

  log_px = evaluator.map_split(log_likelihood, variables, images,
                               settings.iwae_batch_size)
  nll = float(-np.mean(log_px))
  return {'nll_iwae': nll, 'iwae_samples': settings.iwae_samples,
          **evaluator.bits_per_dim('iwae', nll)}


IWAE = spec.Evaluation(
    iwae_metrics, requires=('log_likelihood_bound',),
    settings=('iwae_samples', 'iwae_chunk', 'iwae_batch_size'))
