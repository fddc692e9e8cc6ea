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

Faults (`vaejax.faults`): SIGTERM or Ctrl-C (SIGINT) saves a checkpoint at
the step reached and raises `Interrupted`; a NaN or inf loss or gradient
norm raises `NonFiniteError` before anything after the last good checkpoint
is saved; `checkpoint.resume` deals with unreadable and incompatible
checkpoints.
"""
import logging
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import PartitionSpec as P

from vaejax import checkpoint
from vaejax import evaluators
from vaejax import experiment
from vaejax import faults
from vaejax import metric_writers
from vaejax import prng
from vaejax import sharding
from vaejax import stages
from vaejax import workdir as workdir_lib
from vaejax.data import pipeline

# Logged as the sum over each log interval (a count), not the mean.
SUMMED_METRICS = ('skipped_updates',)


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
  skip_threshold = exp.config.optimizer.skip_update_above_grad_norm
  ema_decay = exp.config.ema_decay

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
      data_keys, objective_keys = prng.data_and_objective_keys(
          jax.random.fold_in(train_key, step), positions)
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
    # Entries the step does not change (early stopping's best variables)
    # pass through.
    new_state = dict(state, step=step + 1, params=params,
                     model_state=model_state, opt_state=opt_state)
    if 'ema_params' in state:
      with jax.named_scope('ema'):
        new_state['ema_params'] = optax.incremental_update(
            params, state['ema_params'], 1.0 - ema_decay)
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
  return os.path.join(workdir_lib.checkpoint_dir(workdir), str(int(step)))


def train_steps(exp, state, manager, writer, evaluator, workdir):
  """Runs chunks from the state's step to `num_train_steps`: logs, quick
  evaluations and checkpoints on their boundaries. Returns the final state.

  Raises:
    NonFiniteError: before anything from the bad chunk is saved.
    StalledError: every update for faults.MAX_CONSECUTIVE_SKIPS steps was
      skipped (the gradient-norm threshold is below the run's norms).
    Interrupted: SIGTERM/SIGINT, after saving the step reached.
    checkpoint.CheckpointWriteError: a checkpoint could not be written.
  """
  config = exp.config
  data_on_device = config.data.on_device
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
  pending, skipped_in_a_row = [], 0
  with faults.StopSignals() as signals:
    try:
      # Read once from the (resumed) state; then set where it changes.
      stopping = experiment.stopped_early(state, config)
      while step < num_steps and not stopping:
        end = next_boundary(step, config)
        chunk_start = time.perf_counter()
        args = feed.chunk_args(step, end)
        state, metrics = train_chunk(state, *args)
        feed.prefetch(end,
                      next_boundary(end, config) if end < num_steps else end)
        metrics = sharding.to_host(metrics)
        progress.add(end - step, time.perf_counter() - chunk_start)
        faults.check_finite(metrics, step, last_checkpoint)
        skipped_in_a_row = faults.check_updates_applied(
            metrics, step, skipped_in_a_row,
            config.optimizer.skip_update_above_grad_norm, last_checkpoint)
        pending.append(metrics)
        step = end
        if step % config.log_every == 0 or step == num_steps:
          scalars = summarize(pending)
          pending = []
          scalars.update(progress.report(step, scalars))
          writer.write_scalars(step,
                               {f'train/{k}': v for k, v in scalars.items()})
        # The last step's periodic evaluation is the final one's work when
        # it would be of the same variables on the same split; with a
        # validation split (early stopping) it is not, and the last
        # variables must be a candidate for the best.
        if (config.eval_every and step % config.eval_every == 0
            and (step < num_steps or 'early_stopping' in state)):
          eval_metrics = evaluator.evaluate(state, step, quick=True)
          writer.write_scalars(step, {f'eval/{k}': v
                                      for k, v in eval_metrics.items()})
          logging.info('[%d/%d] eval on %d %s examples: %s', step, num_steps,
                       eval_metrics['eval_examples'],
                       evaluator.quick_split_name,
                       ' '.join(f'{k}={v:.4g}' for k, v in
                                sorted(eval_metrics.items())
                                if k != 'eval_examples'))
          if 'early_stopping' in state:
            state = experiment.early_stopping_update(exp, state, step,
                                          eval_metrics['loss'])
            stopping = experiment.stopped_early(state, config)
        if (config.checkpoint_every and step % config.checkpoint_every == 0
            or step == num_steps or stopping):
          checkpoint.save(manager, step, state)
          last_checkpoint = step_path(workdir, step)
        stop_signal = signals.stop_requested()
        if stop_signal:
          checkpoint.save(manager, step, state)
          checkpoint.wait_until_finished(manager)
          raise faults.Interrupted(
              f'{signal.Signals(stop_signal).name} received: saved a '
              f'checkpoint at step {step} in {step_path(workdir, step)}. '
              f'Rerun the same command to resume from it.', stop_signal)
        if stopping:
          best = state['early_stopping']
          logging.info(
              'Early stopping at step %d: the validation loss has not '
              'improved for %d evaluations; the best, %.6g at step %d, is '
              'what the final evaluation uses.', step,
              config.early_stopping_patience, float(best['loss']),
              int(best['step']))
          break
    finally:
      feed.close()
  return state


def train_and_evaluate(config, workdir, dataset=None):
  """Trains the experiment of `config` in `workdir`, resuming if possible.

  Bad input (config, data, workdir, incompatible checkpoints) raises an
  `errors.UserError` or `data.DataError` before any training; see
  `train_steps` for what can stop training. Pending checkpoint writes finish
  before any of these propagates.

  A rerun of a finished run with the same config does not train or evaluate
  again: it returns the saved final metrics (`complete=True`).

  Returns {'state', 'metrics', 'complete', 'metrics_path', 'figure_paths',
  'tensorboard_dir'}: the final train state, the final evaluation metrics
  and where the run's outputs are.
  """
  exp = stages.build_experiment(config, dataset)
  is_main_process = jax.process_index() == 0
  checkpoint.check_writable(workdir)
  saved_config = workdir_lib.load_config_dict(workdir)
  manager = checkpoint.create_manager(workdir, config.checkpoints_to_keep)
  try:
    state = experiment.init_state(exp)
    restored = checkpoint.resume(manager, state, workdir, config)
    if restored is not None:
      state = restored
      logging.info('Resumed from %s at step %d.',
                   workdir_lib.checkpoint_dir(workdir), int(state['step']))
      finished = finished_run(workdir, config, saved_config, state)
      if finished is not None:
        manager.close()
        return dict(finished, state=state)
    if is_main_process:
      workdir_lib.save_config(workdir, config)
    writer = metric_writers.MetricWriter(
        workdir_lib.tensorboard_dir(workdir), enabled=is_main_process)
    evaluator = evaluators.build(exp, stages.trained_features)
    train_start = time.perf_counter()
    state = train_steps(exp, state, manager, writer, evaluator, workdir)
    checkpoint.wait_until_finished(manager)
    train_seconds = time.perf_counter() - train_start
  except BaseException:
    checkpoint.close_after_error(manager)
    raise

  step = int(state['step'])
  # Early stopping: the variables that evaluated best on validation.
  evaluated = experiment.best_state(state)
  final_metrics = evaluator.evaluate(evaluated, step, quick=False)
  final_metrics['train_seconds_this_run'] = train_seconds
  if 'early_stopping' in state:
    final_metrics['best_step'] = int(state['early_stopping']['step'])
    final_metrics['best_validation_loss'] = float(
        state['early_stopping']['loss'])
  # Apart from the periodic `eval/` ones (validation when the run holds one
  # out): the final evaluation is of the best variables, on config.eval.split.
  writer.write_scalars(step,
                       {f'final/{k}': v for k, v in final_metrics.items()})
  figure_paths = {}
  if is_main_process:
    # Pictures are small: process 0 draws them from a host copy of the state.
    figure_paths = evaluator.save_figures(workdir, sharding.to_host(evaluated),
                                          step, writer)
  if is_main_process:
    workdir_lib.write_metrics_json(workdir, step, final_metrics)
  writer.close()
  manager.close()
  return {'state': state, 'metrics': final_metrics, 'complete': False,
          'metrics_path': workdir_lib.metrics_path(workdir),
          'figure_paths': figure_paths,
          'tensorboard_dir': workdir_lib.tensorboard_dir(workdir)}


def finished_run(workdir, config, saved_config, state):
  """The outputs of a run that already finished (all steps, or stopped
  early) with this same config, or None (then the loop trains on, or
  evaluates again because a setting changed)."""
  step = int(state['step'])
  if saved_config is None or (step < config.num_train_steps and
                              not experiment.stopped_early(state, config)):
    return None
  if checkpoint.config_differences(saved_config, config):
    return None
  saved = workdir_lib.read_metrics_json(workdir)
  if saved is None or saved.pop('step') != step:
    return None
  logging.info('The run in %s is complete (step %d) and its config is '
               'unchanged: nothing to train or evaluate. To evaluate it '
               'again: python -m vaejax.evaluate --workdir %s', workdir, step,
               workdir)
  figure_paths = {
      os.path.basename(path).rsplit('_step', 1)[0]: path
      for path in workdir_lib.figure_paths(workdir, step)}
  return {'metrics': saved, 'complete': True,
          'metrics_path': workdir_lib.metrics_path(workdir),
          'figure_paths': figure_paths,
          'tensorboard_dir': workdir_lib.tensorboard_dir(workdir)}
