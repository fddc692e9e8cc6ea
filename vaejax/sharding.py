"""Devices: the mesh, shardings, and putting host data on devices.

vaejax is data parallel over one mesh axis, `data`. Parameters, optimiser
state and (small) datasets are replicated; batches are split along their
leading axis. The train and evaluation steps run under `jax.shard_map` with
explicit `lax.pmean` over `data`.
"""
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from vaejax import errors

DATA_AXIS = 'data'


def make_mesh(num_devices=None):
  """A 1-D mesh named `data` over all (or the first `num_devices`) devices."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise errors.ConfigError(
          f'config.num_devices={num_devices} but only {len(devices)} devices '
          f'are visible ({jax.default_backend()}).')
    devices = devices[:num_devices]
  return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))


def check_batch_divisible(batch_size, mesh, what='config.batch_size'):
  num_devices = mesh.shape[DATA_AXIS]
  if batch_size % num_devices:
    raise errors.ConfigError(
        f'{what}={batch_size} is not divisible by the number of devices '
        f'({num_devices}). Choose a multiple of {num_devices}, or run on '
        f'fewer devices with --config.num_devices.')


def replicated(mesh):
  return NamedSharding(mesh, P())


def put_global(tree, mesh, spec):
  """Host arrays that hold the *global* value -> global jax arrays.

  Every process passes the same values; each one copies only the shards its
  own devices hold, so this works on one host and on many.
  """
  sharding = NamedSharding(mesh, spec)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])

  return jax.tree.map(put, tree)


def put_replicated(tree, mesh):
  """Copies a pytree to every device of the mesh."""
  return put_global(tree, mesh, P())


def put_sharded(tree, mesh, spec):
  return put_global(tree, mesh, spec)


def to_host(tree):
  """Global jax arrays -> NumPy arrays with the global value, on every process.

  Replicated arrays are read from a local device; sharded ones are gathered
  from all processes.
  """
  def get(x):
    if not isinstance(x, jax.Array):
      return np.asarray(x)
    if x.is_fully_addressable:
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(get, tree)


def initialize_distributed(coordinator_address=None, num_processes=None,
                           process_id=None):
  """Joins a multi-process run (several hosts, or processes on one host).

  With no arguments JAX detects the cluster (SLURM, Cloud TPU, ...). On CPU
  the processes talk through gloo.
  """
  if jax.config.jax_platforms in (None, '', 'cpu') or 'cpu' in str(
      jax.config.jax_platforms):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id)
