"""Devices: the mesh, shardings, and putting host data on devices.

vaejax is data parallel over one mesh axis, `data`. Parameters, optimiser
state and (small) datasets are replicated; batches are split along their
leading axis. The train and evaluation steps run under `jax.shard_map` with
explicit `lax.pmean` over `data`.
"""
import jax
import numpy as np
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


def put_replicated(tree, mesh):
  """Copies a host pytree to every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def put_sharded(tree, mesh, spec):
  return jax.device_put(tree, NamedSharding(mesh, spec))
