"""Supervised classification: softmax cross-entropy with the class label.

`make_cross_entropy(config)` returns a loss function with the shared
signature of `vaejax.objectives.vae`:

    loss_fn(model, variables, batch, keys, step, train)
        -> (per_example_loss [B], metrics {name: [B]}, model_state)

for any network `model(x, dropout_keys=None) -> logits [B, K]`
(`vaejax.models.classifier`). In training, the inputs are first augmented
on device (`vaejax.data.augmentations.random_crop_and_flip`: a shift of up
to `config.augment_pad` pixels, a left-right flip when `config.augment_flip`)
and the network's dropout is on; both draw from the per-example keys. The
training loss is the cross-entropy with label smoothing ε =
`config.label_smoothing` (Szegedy et al., 2016): the target is
(1 - ε) one_hot(y) + ε / K. Held-out examples are neither augmented nor
dropped out, and their loss is the plain cross-entropy -log p(y | x).

Metrics: `cross_entropy` (-log p(y | x), unsmoothed) and `accuracy`
(1 when the largest logit is the label's).
"""
import jax
import jax.numpy as jnp
import optax

from vaejax import errors
from vaejax import prng
from vaejax.data import augmentations


def cross_entropy_with_smoothing(logits, labels, label_smoothing):
  """[B] -sum_k t_k log softmax(logits)_k, t = (1 - ε) one_hot + ε / K."""
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(
      jax.nn.one_hot(labels, num_classes, dtype=logits.dtype),
      label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def make_cross_entropy(config):
  """The cross-entropy objective of `config` (`config.objective`)."""
  label_smoothing = config.label_smoothing
  if not 0 <= label_smoothing < 1:
    raise errors.ConfigError(
        f'config.objective.label_smoothing={label_smoothing} must be in '
        f'[0, 1).')
  pad = config.augment_pad
  flip = config.augment_flip

  def loss_fn(model, variables, batch, keys, step, train):
    del step
    if 'label' not in batch:
      raise errors.ConfigError(
          'config.objective.name="cross_entropy" trains on class labels and '
          'this data set has none; use a labelled data set (see README '
          '"Your own data").')
    x, labels = batch['inputs'], batch['label']
    if train:
      augment_keys, dropout_keys = prng.split_per_example(keys, 2)
      if pad or flip:
        x = augmentations.random_crop_and_flip(augment_keys, x, pad, flip)
      logits = model.apply(variables, x, dropout_keys)
    else:
      logits = model.apply(variables, x)
    logits = logits.astype(jnp.float32)
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(
        logits, labels)
    loss = (cross_entropy_with_smoothing(logits, labels, label_smoothing)
            if train and label_smoothing else cross_entropy)
    accuracy = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return loss, {'cross_entropy': cross_entropy, 'accuracy': accuracy}, {}

  return loss_fn
