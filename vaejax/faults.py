"""What can stop a training run, and how it stops cleanly.

  * `StopSignals`: SIGTERM or Ctrl-C (SIGINT) becomes a request to stop
    between chunks; the train loop saves a checkpoint at the step reached and
    raises `Interrupted`.
  * `check_finite`: a NaN or inf loss or gradient norm raises
    `NonFiniteError` naming the step, before anything after the last good
    checkpoint is saved.
  * `check_updates_applied`: a run whose updates are all skipped
    (`config.optimizer.skip_update_above_grad_norm` below every gradient
    norm) raises `StalledError` instead of training on with parameters that
    never move.
"""
import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class NonFiniteError(FloatingPointError):
  """Training produced NaN or inf; the last good checkpoint is kept."""


class StalledError(RuntimeError):
  """Every update for MAX_CONSECUTIVE_SKIPS steps was skipped; nothing after
  the last checkpoint is saved (the parameters had not moved anyway)."""


# A healthy run skips a rare spike (VDVAE: a handful in 10^5 steps); this
# many in a row means the threshold is below the run's gradient norms.
MAX_CONSECUTIVE_SKIPS = 100


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


def check_updates_applied(metrics, first_step, skipped_before, threshold,
                          last_checkpoint=None):
  """Counts the skipped updates that end the chunk in a row.

  Args:
    metrics: one chunk's per-step metrics ({'skipped_updates': [n],
      'grad_norm': [n], ...}); without 'skipped_updates' nothing is skipped.
    first_step: the step the chunk started from.
    skipped_before: consecutive skipped updates that ended the chunks before.
    threshold: `config.optimizer.skip_update_above_grad_norm`, for the
      message.
    last_checkpoint: the path the message names as kept.

  Returns:
    The consecutive skipped updates ending at the chunk's last step.

  Raises:
    StalledError: MAX_CONSECUTIVE_SKIPS updates in a row were skipped.
  """
  skipped = metrics.get('skipped_updates')
  if skipped is None:
    return 0
  run = skipped_before
  for offset, was_skipped in enumerate(np.asarray(skipped) > 0):
    run = run + 1 if was_skipped else 0
    if run >= MAX_CONSECUTIVE_SKIPS:
      last = first_step + offset + 1
      norms = np.asarray(metrics['grad_norm'])[max(0, offset + 1 - run):
                                              offset + 1]
      kept = ('no checkpoint had been written yet' if last_checkpoint is None
              else f'the last checkpoint, {last_checkpoint}, is kept')
      raise StalledError(
          f'The {run} updates up to step {last} were all skipped: their '
          f'gradient norms (median {np.median(norms):.4g}, smallest '
          f'{np.min(norms):.4g}) are above '
          f'config.optimizer.skip_update_above_grad_norm={threshold:g}, so '
          f'the parameters no longer change. Training stopped; {kept}. '
          f'Rerun with a threshold above the run\'s usual gradient norm '
          f'(train/grad_norm in TensorBoard), e.g. '
          f'--config.optimizer.skip_update_above_grad_norm='
          f'{_round_up(4 * np.median(norms))}, or 0 to never skip.')
  return run


def _round_up(value):
  """`value` rounded up to one significant digit (4321 -> 5000)."""
  if not np.isfinite(value) or value <= 0:
    return 0
  magnitude = 10 ** np.floor(np.log10(value))
  return int(np.ceil(value / magnitude) * magnitude)
