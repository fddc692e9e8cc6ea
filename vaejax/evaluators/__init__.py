"""Evaluations and figures, chosen by name in `config.eval.extras` and
`config.eval.figures`; one module per concern:

  runner.py      the Evaluator: a train state on the held-out split (sharded
                 per-example maps with fixed keys, the objective's metrics,
                 then the named evaluations and figures)
  likelihood.py  'iwae': the family's log-likelihood bound
  latents.py     'diagnostics', 'linear_probe', 'clustering'
  figures.py     'reconstructions', 'samples', 'interpolations', 'manifold',
                 'traversals', 'pca_scatter'
  denoising.py   'denoising' (evaluation and figure): PSNR of autoencoders
  mixtures.py    'mixture_cluster_accuracy', 'mixture_classifier_accuracy'
  classification.py  'classification': accuracy of a classifier family
  sample_quality.py  'sample_quality', 'sample_quality_reference': FID, KID,
                 precision / recall in a trained classifier's feature space
  codes.py       'codebook_usage' (VQ-VAE), 'two_stage_bound' (a prior over
                 code grids with its VQ-VAE: the bound on -log p(x))
  plots.py       drawing with NumPy and PIL (scatter plots, traversal codes,
                 line plots)
  spec.py        `Evaluation`: a function, the family abilities it needs,
                 whether it needs labels, the config keys it reads

A new evaluation is a function and an `Evaluation` in its module, and one
line in a registry below.
"""
from vaejax import errors
from vaejax import registry
from vaejax.evaluators import classification
from vaejax.evaluators import codes
from vaejax.evaluators import denoising
from vaejax.evaluators import figures
from vaejax.evaluators import latents
from vaejax.evaluators import likelihood
from vaejax.evaluators import mixtures
from vaejax.evaluators import runner
from vaejax.evaluators import sample_quality
from vaejax.evaluators import spec

EVALUATIONS = registry.Registry('evaluation', {
    'iwae': likelihood.IWAE,
    'diagnostics': latents.DIAGNOSTICS,
    'linear_probe': latents.LINEAR_PROBE,
    'clustering': latents.CLUSTERING,
    'denoising': denoising.DENOISING,
    'mixture_cluster_accuracy': mixtures.CLUSTER_ACCURACY,
    'mixture_classifier_accuracy': mixtures.CLASSIFIER_ACCURACY,
    'classification': classification.CLASSIFICATION,
    'sample_quality': sample_quality.SAMPLE_QUALITY,
    'sample_quality_reference': sample_quality.SAMPLE_QUALITY_REFERENCE,
    'codebook_usage': codes.CODEBOOK_USAGE,
    'two_stage_bound': codes.TWO_STAGE_BOUND,
}, 'config.eval.extras')

FIGURES = registry.Registry('figure', {
    'reconstructions': figures.RECONSTRUCTIONS,
    'samples': figures.SAMPLES_FIGURE,
    'interpolations': figures.INTERPOLATIONS,
    'manifold': figures.MANIFOLD,
    'traversals': figures.TRAVERSALS,
    'pca_scatter': figures.PCA_SCATTER,
    'denoising': denoising.DENOISING_FIGURE,
}, 'config.eval.figures')

variables_of = runner.variables_of


def build(exp, trained_features=None):
  """The Evaluator of `exp` with the registered evaluations and figures.

  `trained_features(workdir)` (`vaejax.stages.trained_features`) restores
  the feature extractor of the sample-quality evaluations; without it they
  are skipped.
  """
  return runner.Evaluator(exp, EVALUATIONS, FIGURES, trained_features)


def check_config(config):
  """Fails fast, before any data is loaded, on unknown evaluation or figure
  names and on evaluation settings that could only fail after training."""
  for name in config.eval.extras:
    spec.read_settings(config, EVALUATIONS.get(name).settings)
  for name in config.eval.figures:
    spec.read_settings(config, FIGURES.get(name).settings)
  if 'iwae' in config.eval.extras:
    samples, chunk = config.eval.iwae_samples, config.eval.iwae_chunk
    if samples < 1 or chunk < 1 or samples % chunk:
      raise errors.ConfigError(
          f'config.eval.iwae_samples={samples} must be a positive multiple of '
          f'config.eval.iwae_chunk={chunk} (samples are drawn in chunks of '
          f'that size): set --config.eval.iwae_chunk to a divisor of it.')
