"""The masked-autoencoder objective (He et al., 2022): `masked_patch_mse`.

`make_masked_patch_mse(config)` returns a loss function with the shared
signature of `vaejax.objectives.vae`:

    loss_fn(model, variables, batch, keys, step, train)
        -> (per_example_loss [B], metrics {name: [B]}, model_state)

    loss = sum_n m_n * mean_v (pred_nv - target_nv)^2 / sum_n m_n

over the N patches of an example, m_n = 1 for the masked ones (each
example's mask drawn from its key by `vaejax.models.mae.random_masking`),
so visible patches carry no gradient. The target is the patch itself, or
with `config.model.norm_pix_loss` the patch normalised by its own mean and
standard deviation. Metrics: the loss, `masked_pixel_mse` (the MSE of the
masked patches in pixel space, comparable with or without normalised
targets) and `visible_pixel_mse` (how well the decoder copies what it saw;
not trained).
"""
import jax.numpy as jnp

from vaejax.data import patches


def masked_mean(values, mask):
  """[B, N] per-patch values -> [B] their mean over the masked patches."""
  return jnp.sum(values * mask, axis=-1) / jnp.sum(mask, axis=-1)


def patch_mse(prediction, target):
  """[B, N, P] pair -> [B, N] mean squared error per patch."""
  return jnp.mean(jnp.square(prediction - target), axis=-1)


def make_masked_patch_mse(config):
  """The loss on masked patches; `config` (config.objective) names only the
  likelihood that shows predictions as images."""
  del config

  def loss_fn(model, variables, batch, keys, step, train):
    del step, train
    x = batch['inputs']
    prediction, mask = model.apply(variables, x, keys, method=model.masked)
    image_patches = patches.patchify(x, model.patch_size)
    if model.norm_pix_loss:
      target, (mean, std) = patches.normalized_patches(image_patches)
      in_pixels = prediction * std + mean
    else:
      target, in_pixels = image_patches, prediction
    loss = masked_mean(patch_mse(prediction, target), mask)
    pixel_errors = patch_mse(in_pixels, image_patches)
    metrics = {
        'masked_pixel_mse': masked_mean(pixel_errors, mask),
        'visible_pixel_mse': masked_mean(pixel_errors, 1.0 - mask),
    }
    return loss, metrics, {}

  return loss_fn
