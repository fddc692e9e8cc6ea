"""Sample quality in a classifier's feature space (`config.eval.extras`).

* 'sample_quality': `sample_quality_samples` draws of the family's `sample`
  (quantised to 8 bits, as their pictures are) against the held-out images:
  Fréchet distance, KID (mean and standard deviation over
  `kid_subsets` subsets of `kid_subset_size`) and precision / recall with
  k = `precision_recall_k` (`vaejax.analysis.sample_quality`), named
  `sample_fid`, `sample_kid`, `sample_kid_std`, `sample_precision`,
  `sample_recall`.
* 'sample_quality_reference': the same metrics for images whose quality is
  known, with the same command: `sample_quality_samples` training images
  (the floor: two samples of the data distribution; every metric), and the
  Fréchet distance of the held-out images under Gaussian noise (σ in
  `reference_noise_levels`, in [0, 1] intensity) and Gaussian blur (σ in
  pixels, `reference_blur_levels`), which must rise with the level
  (`reference_monotone` is 1 when every one does). KID and precision /
  recall of the degraded sets are left out: each costs as much as the FIDs
  of all of them.

Features are the `represent` (penultimate layer) of the classifier trained
in `sample_quality_classifier_workdir` (default workdirs/classifier,
`experiments/classifier.py`), restored through the hook the evaluator was
built with (`vaejax.stages.trained_features`). When it has no checkpoint,
both evaluations are skipped with the command that trains it; they never
train it themselves.
"""
import os

import jax
import numpy as np
import scipy.ndimage

from vaejax import sharding
from vaejax import workdir as workdir_lib
from vaejax.analysis import sample_quality as quality
from vaejax.evaluators import spec

CLASSIFIER_EXPERIMENT = 'experiments/classifier.py'
# Noise and blur of the reference rows are drawn from this seed.
REFERENCE_SEED = 0


def has_checkpoint(workdir):
  directory = workdir_lib.checkpoint_dir(workdir)
  return os.path.isdir(directory) and any(
      name.isdigit() for name in os.listdir(directory))


def classifier_unavailable(evaluator, settings):
  """Why the sample-quality features cannot be had here, or None."""
  workdir = settings.sample_quality_classifier_workdir
  if evaluator.trained_features is None:
    return 'this evaluation path restores no feature extractor'
  if not has_checkpoint(workdir):
    return (f'no classifier checkpoint in {workdir}; train it with: python '
            f'-m vaejax.main --config {CLASSIFIER_EXPERIMENT} --workdir '
            f'{workdir} (or set --config.eval.'
            f'sample_quality_classifier_workdir)')
  trained_on = workdir_lib.load_config(workdir).data.name
  evaluated_on = evaluator.exp.config.data.name
  if trained_on != evaluated_on:
    return (f'the classifier in {workdir} was trained on {trained_on}, this '
            f'model on {evaluated_on}')
  return None


def to_uint8(images):
  """Images in [0, 1] -> uint8 pixels (rounded), as a PNG of them holds."""
  return np.round(np.clip(np.asarray(images, np.float64), 0.0, 1.0)
                  * 255.0).astype(np.uint8)


def feature_extractor(evaluator, settings):
  """uint8 images -> classifier features [N, D] (restored once)."""
  workdir = settings.sample_quality_classifier_workdir
  key = ('sample_quality_classifier', workdir)
  if key not in evaluator.cache:
    evaluator.cache[key] = evaluator.trained_features(workdir).extract
  return evaluator.cache[key]


def held_out_features(evaluator, images, settings):
  """The classifier features of the held-out `images` (computed once)."""
  key = ('sample_quality_held_out', settings.sample_quality_classifier_workdir,
         len(images))
  if key not in evaluator.cache:
    evaluator.cache[key] = feature_extractor(evaluator, settings)(images)
  return evaluator.cache[key]


def metrics_against(real, images, evaluator, settings, prefix):
  """{prefix + metric} of uint8 `images` against the features `real`."""
  generated = feature_extractor(evaluator, settings)(images)
  values = quality.sample_quality(
      real, generated, settings.kid_subsets, settings.kid_subset_size,
      settings.precision_recall_k)
  return {f'{prefix}_{name}': value for name, value in values.items()}


def draw_samples(evaluator, variables, num):
  """`num` samples of the family (fixed `sample` key; one key per batch of
  `eval.batch_size`) in [0, 1]."""
  family = evaluator.family
  batch_size = evaluator.eval_config.batch_size
  sample = jax.jit(family.sample, static_argnums=2)
  key = jax.random.fold_in(evaluator.exp.keys['sample'], 1)
  batches = [np.asarray(sample(variables, jax.random.fold_in(key, index),
                               min(batch_size, num - start)))
             for index, start in enumerate(range(0, num, batch_size))]
  return np.concatenate(batches)


def sample_quality_metrics(evaluator, variables, images, settings):
  """Quality of the family's samples against the held-out images (the
  first stage's images for a prior over its codes)."""
  real = held_out_features(evaluator, evaluator.pixel_images(images),
                           settings)
  samples = to_uint8(draw_samples(evaluator, sharding.to_host(variables),
                                  settings.sample_quality_samples))
  metrics = metrics_against(real, samples, evaluator, settings, 'sample')
  metrics['sample_quality_samples'] = len(samples)
  return metrics


def with_gaussian_noise(images, sigma, seed=REFERENCE_SEED):
  """uint8 images + N(0, σ²) noise in [0, 1] intensity, clipped, uint8."""
  rng = np.random.default_rng(seed)
  noisy = images / 255.0 + sigma * rng.standard_normal(images.shape)
  return to_uint8(noisy)


def with_blur(images, sigma):
  """uint8 images [N, H, W, C] blurred by a Gaussian of σ pixels, uint8."""
  blurred = scipy.ndimage.gaussian_filter(
      images / 255.0, sigma=(0, sigma, sigma, 0), mode='nearest')
  return to_uint8(blurred)


def reference_metrics(evaluator, variables, images, settings):
  """The floor (training vs held-out images) and degraded held-out images."""
  del variables
  images = np.asarray(evaluator.pixel_images(images))
  real = held_out_features(evaluator, images, settings)
  train = evaluator.pixel_dataset().train.images[
      :settings.sample_quality_samples]
  metrics = metrics_against(real, np.asarray(train), evaluator, settings,
                            'reference_train')
  fids = {}
  for kind, levels, degrade in (
      ('noise', settings.reference_noise_levels, with_gaussian_noise),
      ('blur', settings.reference_blur_levels, with_blur)):
    fids[kind] = []
    for level in levels:
      degraded = feature_extractor(evaluator, settings)(
          degrade(images, level))
      fid = quality.frechet_distance_of_features(real, degraded)
      metrics[f'reference_{kind}_{level:g}_fid'] = fid
      fids[kind].append(fid)
  metrics['reference_monotone'] = float(all(
      np.all(np.diff(values) > 0) for values in fids.values()))
  return metrics


SETTINGS = ('sample_quality_classifier_workdir', 'sample_quality_samples',
            'kid_subsets', 'kid_subset_size', 'precision_recall_k')
SAMPLE_QUALITY = spec.Evaluation(
    sample_quality_metrics, requires=('sample',), settings=SETTINGS,
    unavailable=classifier_unavailable)
SAMPLE_QUALITY_REFERENCE = spec.Evaluation(
    reference_metrics, settings=SETTINGS + ('reference_noise_levels',
                                            'reference_blur_levels'),
    unavailable=classifier_unavailable)
