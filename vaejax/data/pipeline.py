"""Feeding the train loop: the training set on device, or host batches with
prefetch.

Either way the examples of step s are `BatchOrder.indices(s)` (a function of
the seed and step only) and their randomness comes from their position in
the global batch, so both paths train the same model and a resumed run sees
the same batches as an uninterrupted one.
"""
import concurrent.futures

import numpy as np
from jax.sharding import PartitionSpec as P

from vaejax import sharding


class BatchOrder:
  """Deterministic epoch permutations: batch indices as a function of step."""

  def __init__(self, seed, num_examples, batch_size):
    self.seed = seed
    self.num_examples = num_examples
    self.batch_size = batch_size
    self.steps_per_epoch = num_examples // batch_size
    self._cache = {}

  def _permutation(self, epoch):
    if epoch not in self._cache:
      self._cache = {epoch: np.random.default_rng(
          [self.seed, epoch]).permutation(self.num_examples).astype(np.int32)}
    return self._cache[epoch]

  def indices(self, first_step, num_steps):
    """int32 [num_steps, batch_size]: the examples of each step."""
    out = np.empty((num_steps, self.batch_size), np.int32)
    for i, step in enumerate(range(first_step, first_step + num_steps)):
      epoch, position = divmod(step, self.steps_per_epoch)
      start = position * self.batch_size
      out[i] = self._permutation(epoch)[start:start + self.batch_size]
    return out


class TrainFeed:
  """The arguments of the train chunk for steps [first, end).

  `on_device=True`: the training set is copied to every device once and each
  chunk gets only its batch indices (fastest for data sets that fit).
  `on_device=False`: the host gathers each chunk's images and sends them,
  split over devices (each process copies only its devices' share); the
  next chunk is gathered in a background thread while the current one runs.
  """

  def __init__(self, split, mesh, seed, batch_size, on_device=True):
    self.split = split
    self.mesh = mesh
    self.on_device = on_device
    self.order = BatchOrder(seed, len(split.images), batch_size)
    self._batch_spec = P(None, sharding.DATA_AXIS)
    if on_device:
      self._images = sharding.put_replicated(split.images, mesh)
      # None for an unlabelled data set: the batches then have no 'label'.
      self._labels = (None if split.labels is None
                      else sharding.put_replicated(split.labels, mesh))
    else:
      self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
      self._prefetched = {}

  def _host_batches(self, first, end):
    indices = self.order.indices(first, end - first)
    batches = {'image': self.split.images[indices]}
    if self.split.labels is not None:
      batches['label'] = self.split.labels[indices]
    return sharding.put_global(batches, self.mesh, self._batch_spec)

  def chunk_args(self, first, end):
    """Arguments after `state` for the chunk of steps [first, end)."""
    if self.on_device:
      indices = sharding.put_global(self.order.indices(first, end - first),
                                    self.mesh, self._batch_spec)
      return (self._images, self._labels, indices)
    future = self._prefetched.pop((first, end), None)
    batches = future.result() if future else self._host_batches(first, end)
    return (batches,)

  def prefetch(self, first, end):
    """Starts gathering the chunk [first, end) (host feeding only)."""
    if not self.on_device and first < end:
      self._prefetched[(first, end)] = self._executor.submit(
          self._host_batches, first, end)

  def close(self):
    if not self.on_device:
      self._executor.shutdown(wait=True)
