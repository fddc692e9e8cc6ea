"""Optimisers and learning-rate schedules from the config, all optax."""
import re

import jax
import optax

from vaejax import errors
from vaejax import registry


def constant_schedule(config, num_steps):
  del num_steps
  return optax.constant_schedule(config.learning_rate)


def cosine_schedule(config, num_steps):
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate,
      warmup_steps=config.warmup_steps,
      decay_steps=max(num_steps, config.warmup_steps + 1),
      end_value=config.end_learning_rate)


def warmup_constant_schedule(config, num_steps):
  del num_steps
  return optax.linear_schedule(0.0, config.learning_rate,
                               max(config.warmup_steps, 1))


SCHEDULES = registry.Registry('learning-rate schedule', {
    'constant': constant_schedule,
    'cosine': cosine_schedule,
    'warmup_constant': warmup_constant_schedule,
}, 'config.optimizer.schedule')

OPTIMIZERS = registry.Registry('optimizer', {
    'adam': lambda lr, c: optax.adam(lr, b1=c.b1, b2=c.b2),
    'adamw': lambda lr, c: optax.adamw(lr, b1=c.b1, b2=c.b2,
                                       weight_decay=c.weight_decay),
    'sgd': lambda lr, c: optax.sgd(lr, momentum=c.momentum),
}, 'config.optimizer.name')


# A transformer's blocks are the parameter groups named block<i>; before
# them come the embeddings (layer 0), after them the rest (the last layer).
BLOCK = re.compile(r'block(\d+)')
EMBEDDINGS = ('patch_embed', 'class_token')
AFTER = -1


def layer_decay_multipliers(params, decay):
  """Per-parameter learning-rate factors of layer-wise decay (BEiT; MAE
  fine-tuning): with L blocks, block i gets decay ** (L - i), the
  embeddings decay ** (L + 1), everything after the blocks (final norm,
  head) 1.

  Raises:
    errors.ConfigError: `params` hold no block<i>.
  """
  def layer(path):
    names = [getattr(entry, 'key', str(entry)) for entry in path]
    for name in names:
      match = BLOCK.fullmatch(str(name))
      if match:
        return int(match.group(1)) + 1
    return 0 if any(name in EMBEDDINGS for name in names) else AFTER

  layers = jax.tree_util.tree_map_with_path(lambda path, _: layer(path),
                                            params)
  blocks = [l for l in jax.tree.leaves(layers) if l > 0]
  if not blocks:
    raise errors.ConfigError(
        f'config.optimizer.layer_decay={decay} scales learning rates by '
        f'transformer block (parameters under block<i>), and this model '
        f'has none: set --config.optimizer.layer_decay=0 (off), or use it '
        f'with a ViT (experiments/classifier.py:vit).')
  top = max(blocks) + 1
  return jax.tree.map(lambda l: decay ** (top - (top if l == AFTER else l)),
                      layers)


def scale_by_layer_decay(decay):
  """Multiplies each parameter's update by its `layer_decay_multipliers`
  factor: after AdamW's update (learning rate and weight decay included),
  so a layer's factor scales its learning rate as a per-group lr would."""
  def init(params):
    layer_decay_multipliers(params, decay)  # the error before training
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    factors = layer_decay_multipliers(updates, decay)
    return jax.tree.map(lambda u, f: u * f, updates, factors), state

  return optax.GradientTransformation(init, update)


def make_optimizer(config, num_steps):
  """optax chain: optional global-norm clipping, the named optimiser, then
  optional layer-wise learning-rate decay.

  Args:
    config: `config.optimizer` (`vaejax.configs.common.optimizer`): name,
      learning_rate, schedule, warmup_steps, end_learning_rate,
      grad_clip_norm (0 = off), layer_decay (0 = off) and the optimisers'
      knobs.
    num_steps: total train steps (for decaying schedules).
  """
  schedule = SCHEDULES.get(config.schedule)(config, num_steps)
  optimizer = OPTIMIZERS.get(config.name)(schedule, config)
  if config.layer_decay:
    optimizer = optax.chain(optimizer,
                            scale_by_layer_decay(config.layer_decay))
  clip = config.grad_clip_norm
  if clip:
    optimizer = optax.chain(optax.clip_by_global_norm(clip), optimizer)
  return optimizer
