"""What can stop a training run, and how it stops cleanly.

  * `StopSignals`: SIGTERM or Ctrl-C (SIGINT) becomes a request to stop
    between chunks; the train loop saves a checkpoint at the step reached and
    raises `Interrupted`.
  * `check_finite`: a NaN or inf loss or gradient norm raises
    `NonFiniteError` naming the step, before anything after the last good
    checkpoint is saved.
"""
import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


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
