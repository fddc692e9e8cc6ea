"""Checkpoints with orbax: save, restore-or-init, exact resume, and faults.

Checkpoints live in `workdir/checkpoints/<step>` (the layout is
`vaejax.workdir`). What a long run can meet, and what happens:
  * A kill during a write: orbax writes each step to a temporary directory
    (`<step>.orbax-checkpoint-tmp*`) and renames it when complete, so the
    previous checkpoints stay as they were; the temporary directory is
    ignored, and replaced when that step is saved again.
  * A checkpoint that cannot be read (truncated or corrupted files): `resume`
    moves it to `workdir/corrupt_checkpoints/<step>` with a warning naming
    it, and restores the one before, so a rerun neither starts over while a
    good checkpoint exists nor deletes anything. `restore_readable` (for
    evaluation) restores the one before and leaves the files in place.
  * Checkpoints written with a config of other shapes:
    `IncompatibleCheckpointError` names the arrays and config keys that
    differ, before anything in the workdir changes.
  * A failed write (a full disk): `CheckpointWriteError` says which
    checkpoints are left to resume from.
"""
import json
import logging
import os
import shutil
import tempfile

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from vaejax import errors
from vaejax import workdir as workdir_lib

# Arrays listed in an IncompatibleCheckpointError; the rest are counted.
MAX_LISTED_DIFFERENCES = 8


class CheckpointWriteError(errors.WorkdirError):
  """A checkpoint could not be written; the earlier ones are untouched."""


class IncompatibleCheckpointError(errors.WorkdirError):
  """The workdir's checkpoints do not fit the state of the current config."""


def create_manager(workdir, max_to_keep=3):
  # The item handler lets `resume` read a checkpoint's array metadata
  # (shapes) before restoring it.
  return ocp.CheckpointManager(
      workdir_lib.checkpoint_dir(workdir),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           create=True),
      item_handlers=ocp.StandardCheckpointHandler())


def check_writable(workdir):
  """Creates `workdir` and writes a probe file there, so that a workdir that
  cannot be written fails before training rather than at the first
  checkpoint."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise errors.WorkdirError(
        f'cannot write to the workdir {workdir} ({e.strerror or e}). Pass a '
        f'--workdir you can write to (checkpoints, TensorBoard events and '
        f'images go there).') from e


def _cause(error):
  """The exception's type and first line (tensorstore's go on for pages)."""
  lines = str(error).splitlines() or ['']
  return f'{type(error).__name__}: {lines[0][:500]}'


def _write_failure(manager, error):
  latest = manager.latest_step()
  kept = ('no earlier checkpoint exists' if latest is None else
          f'the earlier checkpoints are untouched (latest: step {latest})')
  return CheckpointWriteError(
      f'could not write a checkpoint in {manager.directory}: '
      f'{_cause(error)}. Training stopped; {kept}. Free '
      f'space (or fix the cause) and rerun the same command to resume.')


def save(manager, step, state):
  """Starts writing `state` as checkpoint `step` (a no-op if it exists).

  Writes finish in the background; an earlier write's failure surfaces here
  or in `wait_until_finished`.
  """
  try:
    manager.save(int(step), args=ocp.args.StandardSave(state))
  except Exception as e:  # orbax reports I/O failures as several types.
    raise _write_failure(manager, e) from e


def wait_until_finished(manager):
  """Blocks until every checkpoint write has finished."""
  try:
    manager.wait_until_finished()
  except Exception as e:  # orbax reports I/O failures as several types.
    raise _write_failure(manager, e) from e


def close_after_error(manager):
  """Lets pending writes finish and closes `manager` while another error
  propagates; a second failure is logged so it does not hide the first."""
  try:
    manager.wait_until_finished()
    manager.close()
  except Exception as e:  # orbax reports I/O failures as several types.
    logging.warning('While stopping, a checkpoint write also failed: %s', e)


def restore_latest(manager, state_like):
  """Restores the newest checkpoint into the structure and shardings of
  `state_like`, or returns None when there is none."""
  step = manager.latest_step()
  if step is None:
    return None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def _path_name(path):
  """A key path as 'params/encoder/kernel', the same for a state and for
  orbax's metadata of it (where NamedTuples become dicts)."""
  parts = []
  for key in path:
    for attribute in ('key', 'name', 'idx'):
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
  return '/'.join(parts)


def _shapes_by_name(tree):
  return {_path_name(path): (tuple(leaf.shape), str(leaf.dtype))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _parameters_first(name):
  """Sort key: a model's parameters say most about what changed."""
  sections = ('params', 'model_state', 'opt_state')
  section = name.split('/')[0]
  return (sections.index(section) if section in sections else len(sections),
          name)


def array_differences(saved_tree, state_like):
  """Lines naming the arrays whose shape or dtype differs between a
  checkpoint's metadata and `state_like`, and those only one of them has."""
  saved, current = _shapes_by_name(saved_tree), _shapes_by_name(state_like)
  changed, one_sided = [], []
  for name in sorted(saved.keys() | current.keys(), key=_parameters_first):
    if name not in current:
      one_sided.append(f'{name}: in the checkpoint only')
    elif name not in saved:
      one_sided.append(f'{name}: in the current config only')
    elif saved[name] != current[name]:
      changed.append(f'{name}: {_describe(saved[name])} in the checkpoint, '
                     f'{_describe(current[name])} now')
  return changed + one_sided


def _describe(shape_and_dtype):
  shape, dtype = shape_and_dtype
  return f'{dtype}{list(shape)}'


def _flatten_dict(tree, prefix=''):
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten_dict(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def config_differences(saved_config, config):
  """'key (saved -> now)' for each config key whose value differs from the
  saved config dict (JSON values: tuples compare as lists)."""
  saved = _flatten_dict(saved_config)
  current = _flatten_dict(json.loads(config.to_json_best_effort()))

  def show(flat, key):
    return repr(flat[key]) if key in flat else 'unset'

  return [f'{key} ({show(saved, key)} -> {show(current, key)})'
          for key in sorted(saved.keys() | current.keys())
          if key not in saved or key not in current
          or saved[key] != current[key]]


def _incompatible(workdir, step, differences, config):
  listed = differences[:MAX_LISTED_DIFFERENCES]
  if len(differences) > len(listed):
    listed.append(f'... and {len(differences) - len(listed)} more')
  message = (f'the checkpoints in {workdir_lib.checkpoint_dir(workdir)} (latest usable: '
             f'step {step}) do not fit the state of the current config:\n  '
             + '\n  '.join(listed))
  saved_config = workdir_lib.load_config_dict(workdir)
  if saved_config is not None:
    changed = config_differences(saved_config, config)
    message += (f'\nConfig keys that differ from {workdir}/config.json: '
                f'{", ".join(changed) or "none"}.')
  message += ('\nNothing was changed. To resume, rerun with the saved values '
              'of the keys that change shapes; to train the new config, use '
              'a new --workdir.')
  return IncompatibleCheckpointError(message)


def _set_aside(manager, workdir, step, error):
  """Moves unreadable checkpoint `step` out of the way, keeping its files."""
  source = os.path.join(workdir_lib.checkpoint_dir(workdir), str(step))
  target = os.path.join(workdir_lib.corrupt_dir(workdir), str(step))
  copy = 1
  while os.path.exists(target):  # set aside before, then written again
    target = os.path.join(os.path.dirname(target), f'{step}.{copy}')
    copy += 1
  logging.warning(
      'Checkpoint %s cannot be read (%s). Moving it to %s and trying the '
      'checkpoint before it.', source, _cause(error), target)
  # Every process has tried to read it; one moves it (a shared directory).
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'vaejax_set_aside_{step}')
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(source, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'vaejax_set_aside_{step}_done')
  # Otherwise orbax would still count the step as saved and skip saving it.
  manager.reload()
  return target


class _Unreadable(Exception):
  """A checkpoint whose files cannot be read (the cause is chained)."""


def _restore_step(manager, step, abstract, workdir, config):
  """Checkpoint `step` restored into `abstract`.

  Raises IncompatibleCheckpointError (arrays of other shapes) before
  reading any array, and _Unreadable for files that cannot be read.
  """
  try:
    metadata = manager.item_metadata(step)
    if metadata is None:
      raise ValueError('the array metadata is missing')
    saved_tree = metadata.tree
  except Exception as e:  # orbax reports unreadable files as several types.
    raise _Unreadable() from e
  differences = array_differences(saved_tree, abstract)
  if differences:
    raise _incompatible(workdir, step, differences, config)
  try:
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))
  except Exception as e:  # orbax reports unreadable files as several types.
    raise _Unreadable() from e


def _newest_readable(manager, state_like, workdir, config, skip):
  """(state of the newest readable checkpoint or None, [skip(step, error)
  for each newer unreadable one])."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
  skipped = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return _restore_step(manager, step, abstract, workdir, config), skipped
    except _Unreadable as e:
      skipped.append(skip(step, e.__cause__))
  return None, skipped


def resume(manager, state_like, workdir, config):
  """The newest readable checkpoint restored into `state_like`, or None.

  Checkpoints that cannot be read are set aside (see the module docstring);
  one whose arrays do not match `state_like` raises
  IncompatibleCheckpointError before anything is restored or moved.
  """
  state, set_aside = _newest_readable(
      manager, state_like, workdir, config,
      lambda step, error: _set_aside(manager, workdir, step, error))
  if state is None and set_aside:
    raise errors.WorkdirError(
        f'no checkpoint in {workdir_lib.checkpoint_dir(workdir)} can be read; they were '
        f'moved to {", ".join(set_aside)}. Rerun to start again from step 0, '
        f'or use a new --workdir.')
  return state


def restore_readable(manager, state_like, workdir, config):
  """For readers (evaluation): the newest checkpoint that can be read.

  Unlike `resume`, nothing is moved: a newer unreadable checkpoint is left
  in place with a warning naming it, and the one before it is restored.
  Raises IncompatibleCheckpointError as `resume` does, and WorkdirError
  when no checkpoint can be read.
  """
  def warn(step, error):
    path = os.path.join(workdir_lib.checkpoint_dir(workdir), str(step))
    logging.warning('Checkpoint %s cannot be read (%s); using the one before '
                    'it. (Left in place: training on in this workdir sets it '
                    'aside.)', path, _cause(error))
    return path

  state, unreadable = _newest_readable(manager, state_like, workdir, config,
                                       warn)
  if state is None:
    raise errors.WorkdirError(
        f'no checkpoint in {workdir_lib.checkpoint_dir(workdir)} can be read '
        f'({", ".join(unreadable) or "none saved"}). Train again with a new '
        f'--workdir; the files were left as they are.')
  return state
