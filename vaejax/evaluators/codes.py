"""Evaluations of discrete latents (`config.eval.extras`):

  'codebook_usage'   of a VQ-VAE's code grids over the whole held-out split:
                     perplexity exp(-sum_k p_k log p_k) of the average code
                     use p (K for uniform use, 1 for one code) and the
                     fraction of the K codes used at all.
  'two_stage_bound'  of a prior over code grids with its VQ-VAE first stage:
                     q(z|x) is a point mass at z_q(x), so
                     -log p(x) <= -log p(x | z_q(x)) - log p_prior(z_q(x)),
                     in nats per example (`nll_bound`; with a Bernoulli
                     decoder on binarised images comparable with the VAEs'
                     nll_iwae), its two terms, and bits per dimension.

The first stage's reconstruction term uses its own transform and fixed
evaluation keys on the same held-out images whose code grids the prior
scores (`vaejax.stages` encodes them that way), so both terms belong to the
same binarised inputs.
"""
import jax.numpy as jnp
import numpy as np

from vaejax.data import transforms
from vaejax.evaluators import spec
from vaejax.objectives import vqvae as vqvae_objectives


def codebook_usage(evaluator, variables, images, settings):
  del settings
  family = evaluator.family

  def code_grids(variables, images, positions):
    x, _ = evaluator.inputs(images, positions)
    return family.code_grid(variables, x)

  codes = evaluator.map_split(code_grids, variables, images)
  num_codes = family.model.quantizer.num_codes
  usage = np.bincount(codes.reshape(-1), minlength=num_codes) / codes.size
  return {
      'codebook_perplexity': float(vqvae_objectives.perplexity(
          jnp.asarray(usage))),
      'codebook_fraction_used': float(np.mean(usage > 0)),
  }


def two_stage_bound(evaluator, variables, images, settings):
  del settings
  family = evaluator.family
  first = family.first_stage
  first_family = first.trained.exp.family
  labels = (None if not evaluator.has_labels else
            jnp.asarray(evaluator.eval_labels(images)))

  def prior_nll(variables_and_labels, codes, positions):
    variables, labels = variables_and_labels
    example_labels = None if labels is None else labels[positions]
    return -family.code_log_prob(variables, codes, example_labels)

  def reconstruction_nll(variables, stage_images, positions):
    x, keys = first.evaluator.inputs(stage_images, positions)
    return first_family.reconstruction_nll(variables, x, keys)

  stage_images = evaluator.pixel_images(images)
  prior = evaluator.map_split(
      prior_nll, (variables, labels if family.num_classes else None), images)
  recon = first.evaluator.map_split(reconstruction_nll,
                                    first.trained.variables, stage_images)
  bound = float(np.mean(prior + recon))
  num_dims = int(np.prod(first.trained.exp.image_shape))
  result = {'nll_bound': bound, 'bound_prior_nll': float(np.mean(prior)),
            'bound_reconstruction_nll': float(np.mean(recon))}
  first_exp = first.trained.exp
  if first_exp.likelihood.discrete or first_exp.transform.nats_per_dim:
    result['bits_per_dim_bound'] = transforms.bits_per_dim(
        bound, num_dims, first_exp.transform)
  return result


CODEBOOK_USAGE = spec.Evaluation(codebook_usage, requires=('code_grid',))
TWO_STAGE_BOUND = spec.Evaluation(
    two_stage_bound, requires=('code_log_prob', 'decode_code_grid'))
