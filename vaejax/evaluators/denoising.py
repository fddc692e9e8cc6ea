"""Denoising evaluations of autoencoders: PSNR at several noise levels and a
figure of noisy / denoised / clean test images.

Both corrupt held-out inputs with the experiment's corruption
(`config.objective.corruption`, which a plain autoencoder also names, at
training level 0) at each level of `config.eval.denoising_levels`, and ask
the family to `reconstruct` them. The noise of an example comes from its
fixed evaluation key as in the objective, and is the same draw at every
level (common random numbers), so PSNR against level is a smooth curve.
Registered in `vaejax.evaluators` as the evaluation and the figure named
'denoising'.

PSNR = 10 log10(1 / MSE) per image in [0, 1], averaged over images; noisy
inputs are clipped to [0, 1] first (the best image the noise itself leaves),
so the denoiser is compared with the strongest trivial baseline.
"""
import jax.numpy as jnp
import numpy as np

from vaejax import images as image_lib
from vaejax.data import corruptions
from vaejax.evaluators import spec
from vaejax.objectives import autoencoder as autoencoder_objectives

# Keeps the PSNR of a perfect reconstruction finite (100 dB).
MIN_MSE = 1e-10


def psnr(image, x):
  """Peak signal-to-noise ratio [B] in dB of images in [0, 1] against x."""
  mse = autoencoder_objectives.mean_squared_error_per_example(image, x)
  return -10.0 * jnp.log10(jnp.maximum(mse, MIN_MSE))


def _corrupt_and_denoise(evaluator, settings):
  """fn(variables, images, positions) -> (clean x, its reconstruction, [(noisy
  x in [0, 1], denoised x)] per level)."""
  family = evaluator.family
  corruption = corruptions.get_corruption(settings.corruption)

  def corrupt_and_denoise(variables, images, positions):
    x, objective_keys = evaluator.inputs(images, positions)
    corruption_keys, _ = (
        autoencoder_objectives.corruption_and_projection_keys(objective_keys))

    def reconstruct(inputs):
      return jnp.clip(family.reconstruct(variables, inputs, objective_keys),
                      0.0, 1.0)

    noisy_and_denoised = []
    for level in settings.denoising_levels:
      noisy = corruption(corruption_keys, x, level)
      noisy_and_denoised.append(
          (jnp.clip(noisy, 0.0, 1.0), reconstruct(noisy)))
    return x, reconstruct(x), noisy_and_denoised

  return corrupt_and_denoise


def denoising_metrics(evaluator, variables, images, settings):
  """Mean PSNR (dB) of reconstructions of clean inputs, and of noisy and
  denoised inputs at each level: psnr_{noisy,denoised}_<corruption>_<level>."""
  corrupt_and_denoise = _corrupt_and_denoise(evaluator, settings)

  def per_example_psnr(variables, images, positions):
    x, reconstruction, noisy_and_denoised = corrupt_and_denoise(
        variables, images, positions)
    values = {'psnr_reconstruction': psnr(reconstruction, x)}
    for level, (noisy, denoised) in zip(settings.denoising_levels,
                                        noisy_and_denoised):
      suffix = f'{settings.corruption}_{float(level):g}'
      values[f'psnr_noisy_{suffix}'] = psnr(noisy, x)
      values[f'psnr_denoised_{suffix}'] = psnr(denoised, x)
    return values

  per_example = evaluator.map_split(per_example_psnr, variables, images)
  return {name: float(np.mean(values))
          for name, values in per_example.items()}


def denoising_figure(evaluator, variables, settings, num_examples=8):
  """Columns of held-out images; per noise level a row of noisy inputs above
  a row of their denoised reconstructions, and the clean inputs last."""
  x, _, noisy_and_denoised = evaluator.map_local(
      _corrupt_and_denoise(evaluator, settings), variables, evaluator.split.images[:num_examples],
      batch_size=num_examples)
  rows = [row for pair in noisy_and_denoised for row in pair] + [x]
  corruption = settings.corruption
  labels = [label for level in settings.denoising_levels
            for label in (f'{corruption} {level:g}', 'denoised')] + ['clean']
  return {'denoising': image_lib.tile_picture(
      np.concatenate(rows), num_examples, row_labels=labels,
      title=f'{evaluator.split_name} images: noisy, denoised, and clean')}


DENOISING_SETTINGS = ('objective.corruption', 'denoising_levels')
DENOISING = spec.Evaluation(denoising_metrics, requires=('reconstruct',),
                            settings=DENOISING_SETTINGS)
DENOISING_FIGURE = spec.Evaluation(denoising_figure, requires=('reconstruct',),
                                   settings=DENOISING_SETTINGS)
