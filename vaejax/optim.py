"""Optimisers and learning-rate schedules from the config, all optax."""
import optax

from vaejax import registry


def constant_schedule(config, num_steps):
  del num_steps
  return optax.constant_schedule(config.learning_rate)


def cosine_schedule(config, num_steps):
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate,
      warmup_steps=config.get('warmup_steps', 0),
      decay_steps=max(num_steps, config.get('warmup_steps', 0) + 1),
      end_value=config.get('end_learning_rate', 0.0))


def warmup_constant_schedule(config, num_steps):
  del num_steps
  return optax.linear_schedule(0.0, config.learning_rate,
                               max(config.get('warmup_steps', 0), 1))


SCHEDULES = registry.Registry('learning-rate schedule', {
    'constant': constant_schedule,
    'cosine': cosine_schedule,
    'warmup_constant': warmup_constant_schedule,
}, 'config.optimizer.schedule')

OPTIMIZERS = registry.Registry('optimizer', {
    'adam': lambda lr, c: optax.adam(lr, b1=c.get('b1', 0.9),
                                     b2=c.get('b2', 0.999)),
    'adamw': lambda lr, c: optax.adamw(lr, b1=c.get('b1', 0.9),
                                       b2=c.get('b2', 0.999),
                                       weight_decay=c.get('weight_decay', 1e-4)),
    'sgd': lambda lr, c: optax.sgd(lr, momentum=c.get('momentum', 0.9)),
}, 'config.optimizer.name')


def make_optimizer(config, num_steps):
  """optax chain: optional global-norm clipping, then the named optimiser.

  Args:
    config: `config.optimizer` with name, learning_rate, schedule and
      optional warmup_steps, grad_clip_norm (0 = off) and optimiser knobs.
    num_steps: total train steps (for decaying schedules).
  """
  schedule = SCHEDULES.get(config.get('schedule', 'constant'))(config,
                                                               num_steps)
  optimizer = OPTIMIZERS.get(config.name)(schedule, config)
  clip = config.get('grad_clip_norm', 0.0)
  if clip:
    optimizer = optax.chain(optax.clip_by_global_norm(clip), optimizer)
  return optimizer
