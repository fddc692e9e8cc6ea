"""Figures (`config.eval.figures`): captioned pictures (`vaejax.images.Picture`)
of image grids in [0, 1], drawn by process 0.

Each asks the family (`vaejax.models.family`) for what it draws:
reconstructions (`reconstruct`), prior samples (`sample`), interpolations
and latent traversals (`encode`, `decode`), the decoded 2-D manifold
(`prior_grid`, `decode`) and a PCA scatter of the representations coloured
by label (`represent`).
"""
import jax.numpy as jnp
import numpy as np

from vaejax import images as image_lib
from vaejax.analysis import pca
from vaejax.evaluators import plots
from vaejax.evaluators import spec

TRAVERSAL_STEPS = 11
TRAVERSAL_RANGE = 3.0
SAMPLES = 64
MANIFOLD_SIZE = 20


def figure_inputs(evaluator, num_examples=32):
  """(model inputs, objective keys) of the first held-out examples (all of
  them when the split is smaller)."""
  num_examples = min(num_examples, len(evaluator.split.images))
  positions = jnp.arange(num_examples)
  images = jnp.asarray(evaluator.split.images[:num_examples])
  return evaluator.inputs(images, positions)


def reconstructions_figure(evaluator, variables, settings):
  """Rows of 8 held-out inputs, each row above what the family makes of them
  (`Family.reconstruction_rows`: the reconstructions, or for a masked
  autoencoder the masked input, the prediction and the original)."""
  del settings
  x, keys = figure_inputs(evaluator)
  columns = min(8, len(x))
  # Whole rows only.
  x, keys = x[:len(x) // columns * columns], keys[:len(x) // columns * columns]
  rows = evaluator.family.reconstruction_rows(variables, x, keys)
  grouped = jnp.stack([row.reshape(-1, columns, *x.shape[1:])
                       for row in rows.values()], axis=1)
  if tuple(rows) == ('input', 'reconstruction'):
    title = f'{evaluator.split_name} inputs and their reconstructions'
  else:
    title = f'{evaluator.split_name} images: {" / ".join(rows)}'
  return {'reconstructions': image_lib.tile_picture(
      grouped.reshape(-1, *x.shape[1:]), columns, title=title,
      row_labels=tuple(rows) * grouped.shape[0])}


def samples_figure(evaluator, variables, settings):
  """64 draws from the prior (fixed `sample` key), decoded."""
  del settings
  family = evaluator.family
  samples = family.sample(variables, evaluator.exp.keys['sample'], SAMPLES)
  return {'samples': image_lib.tile_picture(
      samples, 8, title=f'{SAMPLES} samples of the {family.name}')}


def interpolations_figure(evaluator, variables, settings):
  """8 rows: decoded straight lines between the codes of two test images."""
  del settings
  family = evaluator.family
  codes = family.encode(variables, figure_inputs(evaluator, 16)[0])
  steps = jnp.linspace(0.0, 1.0, 10)[None, :, None]
  path = (1.0 - steps) * codes[0::2, None] + steps * codes[1::2, None]
  return {'interpolations': image_lib.tile_picture(
      family.decode(variables, path.reshape(-1, codes.shape[-1])), 10,
      title=f'decoded codes on the line between two {evaluator.split_name} '
      'images (left: the first, right: the second)')}


def manifold_figure(evaluator, variables, settings):
  """For a 2-D latent: decoded grid over the prior's 5%..95% quantiles."""
  del settings
  family = evaluator.family
  return {'manifold': image_lib.tile_picture(
      family.decode(variables, family.prior_grid(MANIFOLD_SIZE)),
      MANIFOLD_SIZE, padding=0,
      title='decoded 2-D latent grid: z1 left to right, z2 top to bottom, '
      "each over the prior's 5%-95% quantiles")}


def traversals_figure(evaluator, variables, settings):
  """One row per latent dimension among the `traversal_dims` most used.

  Dimensions are ranked by mean KL over the first `scatter_examples`
  held-out examples (by the variance of the code for families without a
  posterior). Each row starts from the code of the first held-out image and
  sets its dimension to TRAVERSAL_STEPS values from -3 to +3 standard
  deviations of that dimension's codes around their mean (for an active
  VAE unit, roughly the prior's range).
  """
  family = evaluator.family
  with_kl = family.has('posterior_kl_per_dim')

  def codes_and_kl(variables, images, positions):
    x, _ = evaluator.inputs(images, positions)
    code = family.encode(variables, x)
    values = {'code': code.reshape(code.shape[0], -1)}
    if with_kl:
      values['kl_per_dim'] = family.posterior_kl_per_dim(variables, x)
    return values

  encodings = evaluator.map_local(
      codes_and_kl, variables,
      evaluator.split.images[:settings.scatter_examples])
  codes = encodings['code']
  usage = (np.mean(encodings['kl_per_dim'], axis=0) if with_kl
           else np.var(codes, axis=0))
  num_dims = min(settings.traversal_dims, codes.shape[1])
  dims = np.argsort(-usage, kind='stable')[:num_dims]
  offsets = np.linspace(-TRAVERSAL_RANGE, TRAVERSAL_RANGE, TRAVERSAL_STEPS)
  values = (np.mean(codes, axis=0)[dims, None]
            + np.std(codes, axis=0)[dims, None] * offsets)
  traversal = plots.traversal_codes(codes[0], dims, values)
  ranked_by = 'mean KL' if with_kl else 'code variance'
  return {'traversals': image_lib.tile_picture(
      family.decode(variables, jnp.asarray(traversal)), TRAVERSAL_STEPS,
      title=f'one latent dimension per row (the {num_dims} with the largest '
      f'{ranked_by}), from -{TRAVERSAL_RANGE:g} to +{TRAVERSAL_RANGE:g} sd',
      row_labels=tuple(f'z[{dim}]' for dim in dims))}


def pca_scatter_figure(evaluator, variables, settings):
  """The held-out representations on their first two principal components,
  coloured by label (the first `scatter_examples` examples)."""
  images = evaluator.split.images[:settings.scatter_examples]
  representations = evaluator.representations(variables, images,
                                               on_all_devices=False)
  points = pca.pca_project(representations, 2)
  # A 1-D code has one component: draw it along the first axis.
  points = np.pad(points, ((0, 0), (0, 2 - points.shape[1])))
  return {'pca_scatter': image_lib.Picture(plots.scatter_plot(
      points, evaluator.split.labels[:len(images)],
      evaluator.exp.dataset.class_names,
      title=f'PCA of {settings.split} codes'))}


RECONSTRUCTIONS = spec.Evaluation(reconstructions_figure,
                                  requires=('reconstruct',))
SAMPLES_FIGURE = spec.Evaluation(samples_figure, requires=('sample',))
INTERPOLATIONS = spec.Evaluation(interpolations_figure,
                                 requires=('encode', 'decode'))
MANIFOLD = spec.Evaluation(manifold_figure, requires=('prior_grid', 'decode'))
TRAVERSALS = spec.Evaluation(
    traversals_figure, requires=('encode', 'decode'),
    settings=('traversal_dims', 'scatter_examples'))
PCA_SCATTER = spec.Evaluation(
    pca_scatter_figure, requires=('represent',), needs_labels=True,
    settings=('scatter_examples', 'split'))
