"""Checkpoints with orbax: save, restore-or-init, exact resume.

Checkpoints live in `workdir/checkpoints/<step>`; the experiment config is
saved as `workdir/config.json`. orbax writes each step to a temporary
directory and renames it when complete, so an interrupted save never
replaces the previous checkpoint.
"""
import json
import os

import jax
import orbax.checkpoint as ocp


def checkpoint_dir(workdir):
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def create_manager(workdir, max_to_keep=3):
  return ocp.CheckpointManager(
      checkpoint_dir(workdir),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           create=True))


def save(manager, step, state):
  manager.save(int(step), args=ocp.args.StandardSave(state))


def restore_latest(manager, state_like):
  """Restores the newest checkpoint into the structure and shardings of
  `state_like`, or returns None when there is none."""
  step = manager.latest_step()
  if step is None:
    return None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def save_config(workdir, config):
  """Writes config.json atomically (write to a temporary file, then rename)."""
  path = os.path.join(workdir, 'config.json')
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(tmp, path)


def load_config_dict(workdir):
  """The saved config of a workdir as a plain dict, or None."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)
