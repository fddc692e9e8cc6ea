"""Optimisers and learning-rate schedules from the config, all optax."""
import optax

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


def make_optimizer(config, num_steps):
  """optax chain: optional global-norm clipping, then the named optimiser.

  Args:
    config: `config.optimizer` (`vaejax.configs.common.optimizer`): name,
      learning_rate, schedule, warmup_steps, end_learning_rate,
      grad_clip_norm (0 = off) and the optimisers' knobs.
    num_steps: total train steps (for decaying schedules).
  """
  schedule = SCHEDULES.get(config.schedule)(config, num_steps)
  optimizer = OPTIMIZERS.get(config.name)(schedule, config)
  clip = config.grad_clip_norm
  if clip:
    optimizer = optax.chain(optax.clip_by_global_norm(clip), optimizer)
  return optimizer
