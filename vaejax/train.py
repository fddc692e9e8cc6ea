"""The one train loop: `train_and_evaluate(config, workdir)`.

Every model family trains here. What varies between families is chosen by
name in the config and plugged in through three registries:
  * `models.MODELS`: the flax module (networks only);
  * `objectives.OBJECTIVES`: a loss function with the shared signature
    `(model, variables, batch, keys, step, train) -> (per_example_loss,
    metrics, model_state)`; non-parameter collections it returns (batch-norm
    statistics, codebook EMAs, EM statistics) replace the old ones;
  * `data.transforms.TRANSFORMS`: uint8 images -> model inputs, on device.

The training set lives on device; `steps_per_dispatch` steps run inside one
`lax.scan`, under `jax.shard_map` over the `data` mesh axis, with
summation of gradients (autodiff's own psum for replicated parameters) and
`lax.pmean` of metrics and model state (skipped on a single device).

Randomness: one root key from `config.seed`, split into named streams. In
step s the example at position i of the global batch gets the key
fold_in(fold_in(train_key, s), i), so the numbers do not depend on the
device count. The data order is a NumPy permutation per epoch seeded by
(seed, epoch): a resumed run sees exactly the batches of an uninterrupted one.

Faults: SIGTERM or Ctrl-C (SIGINT) saves a checkpoint at the step reached
and raises `Interrupted`; a NaN or inf loss or gradient norm raises
`NonFiniteError` before anything after the last good checkpoint is saved;
`checkpoint.resume` deals with unreadable and incompatible checkpoints.
"""
import logging
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from vaejax import checkpoint
from vaejax import evaluate
from vaejax import experiment
from vaejax import metric_writers
from vaejax import sharding
from vaejax.data import pipeline

# Logged as the sum over each log interval (a count), not the mean.
SUMMED_METRICS = ('skipped_updates',)


class NonFiniteError(FloatingPointError):
  """Training produced NaN or inf; the last good checkpoint is kept."""


class Interrupted(Exception):
  """SIGTERM or SIGINT stopped training after a checkpoint was saved."""

  def __init__(self, message, signal_number):
    super().__init__(message)
    self.signal_number = signal_number


class StopSignals:
  """Turns SIGTERM and SIGINT into a request to stop between chunks.

  A preempted or Ctrl-C'd run then saves the steps it has done instead of
  losing those since the last checkpoint. The first signal restores the
  previous handler, so a second one acts at once (Ctrl-C twice). Handlers
  can only be installed from the main thread; a run in another thread keeps
  the usual behaviour.
  """
  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signal_number in self.SIGNALS:
        self._previous[signal_number] = signal.signal(signal_number,
                                                      self._handle)
    return self

  def _handle(self, signal_number, frame):
    del frame
    self.received = signal_number
    self._restore(signal_number)

  def _restore(self, signal_number):
    previous = self._previous.get(signal_number)
    # None: a handler installed from C, which Python cannot reinstall.
    signal.signal(signal_number,
                  signal.SIG_DFL if previous is None else previous)

  def __exit__(self, *exc_info):
    for signal_number in self._previous:
      self._restore(signal_number)

  def stop_requested(self):
    """The number of the signal that stops the run, or None.

    With several processes, a signal to any of them stops all at the same
    step, since saving a checkpoint is collective.
    """
    received = self.received or 0
    if jax.process_count() > 1:
      received = int(np.max(multihost_utils.process_allgather(
          np.int32(received))))
    return received or None


def example_keys(step_key, positions):
  """One key per example, from its position in the global batch."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(step_key, positions)


def split_per_example(keys, num):
  """[B] keys -> tuple of `num` arrays of [B] keys (independent streams)."""
  split = jax.vmap(lambda k: jax.random.split(k, num))(keys)
  return tuple(split[:, i] for i in range(num))


def make_train_chunk(exp, data_on_device=True):
  """jit(shard_map(scan of train steps)) with the state donated.

  With the data on device, returns f(state, images, labels, indices [n,
  global_batch]) -> (state, metrics {name: [n]}): each step gathers its
  examples from the device copy of the training set. Otherwise returns
  f(state, batches {'image': [n, global_batch, ...], 'label': ...}) for
  batches that the host gathered.
  """
  num_devices = exp.mesh.shape[sharding.DATA_AXIS]
  global_batch = exp.config.batch_size
  local_batch = global_batch // num_devices
  train_key = exp.keys['train']
  model, objective, transform = exp.model, exp.objective, exp.transform
  optimizer = exp.optimizer
  skip_threshold = exp.config.optimizer.get('skip_update_above_grad_norm', 0.0)

  def across_devices(collective, tree):
    # A mean over one device is the identity; XLA:CPU would still run it.
    if num_devices == 1:
      return tree
    return collective(tree, sharding.DATA_AXIS)

  def train_step(state, local_batch_data):
    step = state['step']
    positions = (lax.axis_index(sharding.DATA_AXIS) * local_batch
                 + jnp.arange(local_batch))
    # The named scopes label the ops in a profile (`python -m
    # vaejax.benchmark --profile`, TensorBoard's profiler).
    with jax.named_scope('inputs'):
      keys = example_keys(jax.random.fold_in(train_key, step), positions)
      data_keys, objective_keys = split_per_example(keys, 2)
      batch = dict(local_batch_data,
                   inputs=transform.apply(data_keys, local_batch_data['image']))

    def share_of_global_mean_loss(params):
      variables = {'params': params, **state['model_state']}
      per_example_loss, metrics, model_state = objective(
          model, variables, batch, objective_keys, step, True)
      share = jnp.sum(per_example_loss) / global_batch
      return share, (per_example_loss, metrics, model_state)

    # The parameters are the same on every device, so under shard_map the
    # gradient with respect to them is summed over devices by autodiff
    # (the transpose of broadcasting them to per-device work): the sum of
    # each device's share is the gradient of the global mean loss.
    with jax.named_scope('loss_and_gradient'):
      (_, (per_example_loss, metrics, model_state)), grads = (
          jax.value_and_grad(share_of_global_mean_loss, has_aux=True)(
              state['params']))
    with jax.named_scope('metrics'):
      metrics = {name: jnp.mean(value) for name, value in metrics.items()}
      metrics['loss'] = jnp.mean(per_example_loss)
      metrics = across_devices(lax.pmean, metrics)
      metrics['grad_norm'] = optax.tree.norm(grads)
    # Non-gradient state (batch-norm statistics, codebook EMAs, EM
    # statistics) is averaged over devices, so every device keeps the same
    # copy. Integer state (an optimiser's step count) must already agree
    # across devices (shard_map checks this); a mean would make it a float.
    model_state = jax.tree.map(
        lambda value: (across_devices(lax.pmean, value)
                       if jnp.issubdtype(value.dtype, jnp.inexact)
                       else value),
        model_state)

    @jax.named_scope('optimizer')
    def apply_update(params, opt_state):
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    if skip_threshold:
      # As in VDVAE: a step whose gradient norm is above the threshold (a
      # rare spike) leaves the parameters and optimiser state as they were.
      # The gradient norm is the same on every device, so they all agree.
      skip = metrics['grad_norm'] > skip_threshold
      params, opt_state = lax.cond(
          skip, lambda params, opt_state: (params, opt_state), apply_update,
          state['params'], state['opt_state'])
      metrics['skipped_updates'] = skip.astype(jnp.float32)
    else:
      params, opt_state = apply_update(state['params'], state['opt_state'])
    new_state = {
        'step': step + 1,
        'params': params,
        'model_state': model_state,
        'opt_state': opt_state,
    }
    return new_state, metrics

  def chunk_from_device_data(state, images, labels, indices):
    def gather_and_step(state, step_indices):
      batch = {'image': images[step_indices]}
      if labels is not None:  # None: an unlabelled data set.
        batch['label'] = labels[step_indices]
      return train_step(state, batch)
    return lax.scan(gather_and_step, state, indices)

  def chunk_from_host_batches(state, batches):
    return lax.scan(train_step, state, batches)

  batch_spec = P(None, sharding.DATA_AXIS)
  if data_on_device:
    chunk, in_specs = chunk_from_device_data, (P(), P(), P(), batch_spec)
  else:
    chunk, in_specs = chunk_from_host_batches, (P(), batch_spec)

  # On one device, check_vma=False: autodiff then adds no psum of the
  # gradients, which XLA:CPU runs as a copy of all of them even for a single
  # device (~4% of a small model's step). Over one device every collective
  # is the identity, so both settings compute the same numbers.
  return jax.jit(
      jax.shard_map(chunk, mesh=exp.mesh, in_specs=in_specs,
                    out_specs=(P(), P()), check_vma=num_devices > 1),
      donate_argnums=(0,))


def next_boundary(step, config):
  """The next step at which something happens (log, eval, checkpoint, end).

  Chunks end on multiples of these intervals, so an interrupted and resumed
  run dispatches exactly the same chunks as an uninterrupted one.
  """
  intervals = [config.steps_per_dispatch, config.log_every,
               config.eval_every, config.checkpoint_every]
  candidates = [config.num_train_steps]
  candidates += [(step // n + 1) * n for n in intervals if n > 0]
  return min(candidates)


def check_finite(metrics, first_step, last_checkpoint=None):
  """Raises NonFiniteError naming the first step and metric that is not finite.

  `last_checkpoint` (a path) is the one the message tells the user to resume
  from.
  """
  for name in ('loss', 'grad_norm'):
    values = metrics[name]
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
      step = first_step + int(bad[0]) + 1
      if last_checkpoint is None:
        kept = 'no checkpoint had been written yet'
      else:
        kept = (f'the last good checkpoint, {last_checkpoint}, is kept: '
                f'rerun the same command with a lower '
                f'--config.optimizer.learning_rate or with '
                f'--config.optimizer.skip_update_above_grad_norm set to '
                f'resume from it')
      raise NonFiniteError(
          f'{name} became {values[bad[0]]} at step {step}. Training stopped; '
          f'{kept}. Otherwise start a new --workdir with '
          f'config.optimizer.grad_clip_norm set, or check the data.')


def summarize(chunk_metrics):
  """Per-step metrics of the chunks since the last log -> one number each:
  the mean, or for counts (SUMMED_METRICS) the sum."""
  scalars = {}
  for name in chunk_metrics[0]:
    values = np.concatenate([metrics[name] for metrics in chunk_metrics])
    scalars[name] = float(np.sum(values) if name in SUMMED_METRICS
                          else np.mean(values))
  return scalars


def step_path(workdir, step):
  return os.path.join(checkpoint.checkpoint_dir(workdir), str(int(step)))


def train_steps(exp, state, manager, writer, evaluator, workdir):
  """Runs chunks from the state's step to `num_train_steps`: logs, quick
  evaluations and checkpoints on their boundaries. Returns the final state.

  Raises:
    NonFiniteError: before anything from the bad chunk is saved.
    Interrupted: SIGTERM/SIGINT, after saving the step reached.
    checkpoint.CheckpointWriteError: a checkpoint could not be written.
  """
  config = exp.config
  data_on_device = config.data.get('on_device', True)
  feed = pipeline.TrainFeed(exp.dataset.train, exp.mesh, config.seed,
                            config.batch_size, data_on_device)
  train_chunk = make_train_chunk(exp, data_on_device)
  step = int(state['step'])
  last_checkpoint = step_path(workdir, step) if step else None
  num_steps = config.num_train_steps
  progress = metric_writers.ProgressReporter(num_steps, config.batch_size)
  logging.info('Training %s / %s on %s (%d train examples) with %d devices '
               'from step %d to %d.', config.model.name, config.objective.name,
               exp.dataset.source, len(exp.dataset.train.images),
               exp.mesh.shape[sharding.DATA_AXIS], step, num_steps)
  pending = []
  with StopSignals() as signals:
    try:
      while step < num_steps:
        end = next_boundary(step, config)
        chunk_start = time.perf_counter()
        args = feed.chunk_args(step, end)
        state, metrics = train_chunk(state, *args)
        feed.prefetch(end,
                      next_boundary(end, config) if end < num_steps else end)
        metrics = sharding.to_host(metrics)
        progress.add(end - step, time.perf_counter() - chunk_start)
        check_finite(metrics, step, last_checkpoint)
        pending.append(metrics)
        step = end
        if step % config.log_every == 0 or step == num_steps:
          scalars = summarize(pending)
          pending = []
          scalars.update(progress.report(step, scalars))
          writer.write_scalars(step,
                               {f'train/{k}': v for k, v in scalars.items()})
        if (config.eval_every and step % config.eval_every == 0
            and step < num_steps):
          eval_metrics = evaluator.evaluate(state, step, quick=True)
          writer.write_scalars(step, {f'eval/{k}': v
                                      for k, v in eval_metrics.items()})
        if (config.checkpoint_every and step % config.checkpoint_every == 0
            or step == num_steps):
          checkpoint.save(manager, step, state)
          last_checkpoint = step_path(workdir, step)
        stop_signal = signals.stop_requested()
        if stop_signal:
          checkpoint.save(manager, step, state)
          checkpoint.wait_until_finished(manager)
          raise Interrupted(
              f'{signal.Signals(stop_signal).name} received: saved a '
              f'checkpoint at step {step} in {step_path(workdir, step)}. '
              f'Rerun the same command to resume from it.', stop_signal)
    finally:
      feed.close()
  return state


def train_and_evaluate(config, workdir, dataset=None):
  """Trains the experiment of `config` in `workdir`, resuming if possible.

  Bad input (config, data, workdir, incompatible checkpoints) raises an
  `errors.UserError` or `data.DataError` before any training; see
  `train_steps` for what can stop training. Pending checkpoint writes finish
  before any of these propagates.

  Returns a dict with the final train state and the final evaluation metrics.
  """
  exp = experiment.build_experiment(config, dataset)
  is_main_process = jax.process_index() == 0
  checkpoint.check_writable(workdir)
  manager = checkpoint.create_manager(workdir,
                                      config.get('checkpoints_to_keep', 3))
  try:
    state = experiment.init_state(exp)
    restored = checkpoint.resume(manager, state, workdir, config)
    if restored is not None:
      state = restored
      logging.info('Resumed from %s at step %d.',
                   checkpoint.checkpoint_dir(workdir), int(state['step']))
    if is_main_process:
      checkpoint.save_config(workdir, config)
    writer = metric_writers.MetricWriter(
        os.path.join(workdir, 'tensorboard'), enabled=is_main_process)
    evaluator = evaluate.Evaluator(exp)
    train_start = time.perf_counter()
    state = train_steps(exp, state, manager, writer, evaluator, workdir)
    checkpoint.wait_until_finished(manager)
    train_seconds = time.perf_counter() - train_start
  except BaseException:
    checkpoint.close_after_error(manager)
    raise

  step = int(state['step'])
  final_metrics = evaluator.evaluate(state, step, quick=False)
  final_metrics['train_seconds_this_run'] = train_seconds
  writer.write_scalars(step, {f'eval/{k}': v for k, v in final_metrics.items()})
  if is_main_process:
    # Pictures are small: process 0 draws them from a host copy of the state.
    for name, grid in evaluator.figures(sharding.to_host(state)).items():
      evaluator.save_figure(workdir, name, grid, step)
      writer.write_image(step, f'images/{name}', grid)
  if is_main_process:
    evaluate.write_metrics_json(workdir, step, final_metrics)
  writer.close()
  manager.close()
  return {'state': state, 'metrics': final_metrics}
