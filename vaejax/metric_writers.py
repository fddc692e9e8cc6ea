"""Metrics to TensorBoard event files and to the console, with rate and ETA.

TensorBoard events are written with tensorboardX (no TensorFlow needed) and
read by TensorBoard as usual: `tensorboard --logdir WORKDIR`.
"""
import logging

import numpy as np
import tensorboardX

from vaejax import images as image_lib


class MetricWriter:
  """Writes scalars and image grids; only process 0 writes anything."""

  def __init__(self, logdir, enabled=True):
    self._writer = tensorboardX.SummaryWriter(logdir) if enabled else None

  def write_scalars(self, step, scalars):
    if self._writer is None:
      return
    for name, value in scalars.items():
      self._writer.add_scalar(name, float(value), int(step))
    self._writer.flush()

  def write_image(self, step, name, grid):
    """grid: [h, w, C] in [0, 1]."""
    if self._writer is None:
      return
    self._writer.add_image(name, image_lib.to_uint8(grid), int(step),
                           dataformats='HWC')
    self._writer.flush()

  def close(self):
    if self._writer is not None:
      self._writer.close()


def format_duration(seconds):
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  if minutes:
    return f'{minutes}m{seconds:02d}s'
  return f'{seconds}s'


class ProgressReporter:
  """Logs `step/total`, chosen metrics, steps/s, examples/s and ETA.

  Rates count only time spent training (dispatch to metrics on the host),
  not evaluation or checkpointing between chunks. The ETA leaves out the
  first chunk of a run (it includes compilation) once later chunks exist.
  """

  def __init__(self, num_steps, batch_size):
    self.num_steps = num_steps
    self.batch_size = batch_size
    self._steps = 0
    self._seconds = 0.0
    self._chunks = 0
    self._steady_steps = 0
    self._steady_seconds = 0.0

  def add(self, steps, seconds):
    self._steps += steps
    self._seconds += seconds
    self._chunks += 1
    if self._chunks > 1:
      self._steady_steps += steps
      self._steady_seconds += seconds

  def steady_rate(self):
    """Steps per second after the first chunk (None before a second)."""
    if not self._steady_steps:
      return None
    return self._steady_steps / max(self._steady_seconds, 1e-9)

  def report(self, step, scalars):
    """Logs one line; returns the rates since the last report."""
    steps_per_s = self._steps / max(self._seconds, 1e-9)
    self._steps, self._seconds = 0, 0.0
    eta_rate = self.steady_rate() or steps_per_s
    eta = (self.num_steps - step) / eta_rate if eta_rate > 0 else np.inf
    shown = ' '.join(f'{k}={float(v):.4g}' for k, v in scalars.items())
    logging.info(
        '[%d/%d %3.0f%%] %s | %.1f steps/s, %.0f examples/s, ETA %s',
        step, self.num_steps, 100.0 * step / self.num_steps, shown,
        steps_per_s, steps_per_s * self.batch_size,
        format_duration(eta) if np.isfinite(eta) else '?')
    return {'steps_per_s': steps_per_s,
            'examples_per_s': steps_per_s * self.batch_size}


def format_metrics(metrics):
  """One `name: value` line per metric, names aligned."""
  width = max(map(len, metrics))
  return '\n'.join(f'{name:>{width}s}: {value:.6g}'
                   for name, value in sorted(metrics.items()))
