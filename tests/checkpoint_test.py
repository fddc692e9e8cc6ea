"""Checkpoint faults on a small synthetic train state (no model, no compile):
a kill during a write, corrupted checkpoints, shape changes, a full disk, a
workdir that cannot be written."""
import errno
import glob
import logging
import os
import shutil
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from vaejax import checkpoint
from vaejax import errors
from vaejax import workdir as workdir_lib
from conftest import REPO_ROOT

# orbax's reads of truncated arrays fail in coroutines that report once more
# after their event loop has closed.
ORBAX_UNRAISABLE = pytest.mark.filterwarnings(
    'ignore::pytest.PytestUnraisableExceptionWarning')


def make_state(step, hidden=3):
  params = {'dense': {'kernel': jnp.full((4, hidden), float(step)),
                      'bias': jnp.arange(hidden, dtype=jnp.float32)}}
  return {'step': jnp.asarray(step, jnp.int32), 'params': params,
          'model_state': {}, 'opt_state': optax.adam(1e-3).init(params)}


def make_config(hidden=3):
  return ml_collections.ConfigDict({'model': {'hidden': hidden},
                                    'num_train_steps': 100})


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def file_contents(directory):
  """{relative path: bytes} of every file under `directory`."""
  contents = {}
  for path in glob.glob(os.path.join(directory, '**'), recursive=True):
    if os.path.isfile(path):
      with open(path, 'rb') as f:
        contents[os.path.relpath(path, directory)] = f.read()
  return contents


@pytest.fixture
def workdir(tmp_path):
  """A workdir with config.json and checkpoints at steps 10 and 20."""
  workdir = str(tmp_path / 'w')
  manager = checkpoint.create_manager(workdir)
  for step in (10, 20):
    checkpoint.save(manager, step, make_state(step))
  checkpoint.wait_until_finished(manager)
  manager.close()
  workdir_lib.save_config(workdir, make_config())
  return workdir


def step_dir(workdir, step):
  return os.path.join(workdir_lib.checkpoint_dir(workdir), str(step))


def resume(workdir, state_like=None, config=None):
  manager = checkpoint.create_manager(workdir)
  restored = checkpoint.resume(manager, state_like or make_state(0), workdir,
                               config or make_config())
  return manager, restored


def truncate_array_data(directory):
  for path in glob.glob(os.path.join(directory, '**', 'd', '*'),
                        recursive=True):
    os.truncate(path, os.path.getsize(path) // 2)


def garble_metadata(directory):
  with open(os.path.join(directory, 'default', '_METADATA'), 'w') as f:
    f.write('{"tree_metadata": ')


def empty_step_directory(directory):
  shutil.rmtree(directory)
  os.makedirs(directory)


def test_kill_during_write_leaves_previous_checkpoint_usable(workdir):
  # What a kill while orbax writes step 30 leaves: a half-written temporary
  # directory (here: step 20's files with the array data cut short).
  partial = step_dir(workdir, '30.orbax-checkpoint-tmp-1700000000')
  shutil.copytree(step_dir(workdir, 20), partial)
  truncate_array_data(partial)
  manager, restored = resume(workdir)
  assert_trees_equal(restored, make_state(20))
  checkpoint.save(manager, 30, make_state(30))
  checkpoint.wait_until_finished(manager)
  assert manager.all_steps() == [10, 20, 30]
  manager.close()


@ORBAX_UNRAISABLE
@pytest.mark.parametrize('corrupt', [truncate_array_data, garble_metadata,
                                     empty_step_directory])
def test_unreadable_latest_is_set_aside_and_previous_restored(
    workdir, corrupt, caplog):
  corrupt(step_dir(workdir, 20))
  corrupted_files = file_contents(step_dir(workdir, 20))
  good_files = file_contents(step_dir(workdir, 10))
  with caplog.at_level(logging.WARNING):
    manager, restored = resume(workdir)
  assert_trees_equal(restored, make_state(10))
  assert step_dir(workdir, 20) in caplog.text
  # Nothing is deleted: the unreadable checkpoint is moved, byte for byte.
  set_aside = os.path.join(workdir, 'corrupt_checkpoints', '20')
  assert file_contents(set_aside) == corrupted_files
  assert file_contents(step_dir(workdir, 10)) == good_files
  # Training on from step 10 writes step 20 again (orbax would skip a step
  # it still believed saved).
  checkpoint.save(manager, 20, make_state(20))
  checkpoint.wait_until_finished(manager)
  manager.close()
  assert_trees_equal(resume(workdir)[1], make_state(20))


@ORBAX_UNRAISABLE
def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(workdir):
  for step in (10, 20):
    truncate_array_data(step_dir(workdir, step))
  with pytest.raises(errors.WorkdirError,
                     match='no checkpoint in .* can be read'):
    resume(workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'corrupt_checkpoints'))) == [
      '10', '20']


def test_shape_change_names_arrays_and_config_keys(workdir):
  before = file_contents(workdir)
  with pytest.raises(checkpoint.IncompatibleCheckpointError) as info:
    resume(workdir, make_state(0, hidden=5), make_config(hidden=5))
  message = str(info.value)
  assert 'params/dense/kernel: float32[4, 3] in the checkpoint, float32[4, 5] now' in message
  assert 'model.hidden (3 -> 5)' in message
  assert 'num_train_steps' not in message  # unchanged keys are not listed
  assert file_contents(workdir) == before


def test_optimizer_change_is_a_structure_difference(workdir):
  state = make_state(0)
  state['opt_state'] = optax.sgd(0.1, momentum=0.9).init(state['params'])
  with pytest.raises(checkpoint.IncompatibleCheckpointError,
                     match='opt_state/0/mu/dense/bias: in the checkpoint only'):
    resume(workdir, state)


async def write_fails_with_full_disk(*args, **kwargs):
  """Stands in for the file orbax writes after a checkpoint's arrays."""
  del args, kwargs
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_stops_with_message_and_keeps_earlier_checkpoints(
    workdir, monkeypatch):
  monkeypatch.setattr(ocp.BasePyTreeCheckpointHandler, '_write_metadata_file',
                      write_fails_with_full_disk)
  good_files = {step: file_contents(step_dir(workdir, step))
                for step in (10, 20)}
  manager, _ = resume(workdir)
  with pytest.raises(checkpoint.CheckpointWriteError) as info:
    checkpoint.save(manager, 30, make_state(30))
    checkpoint.wait_until_finished(manager)
  assert 'No space left on device' in str(info.value)
  assert 'latest: step 20' in str(info.value)
  checkpoint.close_after_error(manager)
  monkeypatch.undo()
  for step in (10, 20):
    assert file_contents(step_dir(workdir, step)) == good_files[step]
  assert_trees_equal(resume(workdir)[1], make_state(20))


def test_workdir_that_cannot_be_written(tmp_path):
  not_a_directory = tmp_path / 'file'
  not_a_directory.write_text('')
  with pytest.raises(errors.WorkdirError, match='cannot write to the workdir'):
    checkpoint.check_writable(str(not_a_directory / 'w'))


# Training into a workdir whose parent is read-only, as an ordinary user:
# root writes anywhere, so as root the process gives up its privileges once
# it has read the config and the data and imported what building the
# experiment needs (the package may be installed where nobody cannot read).
READ_ONLY_WORKDIR_RUN = """
import os, sys
sys.path.insert(0, 'tests')
from conftest import tiny_config
from vaejax import data, errors, experiment, train
config = tiny_config(sys.argv[1])
dataset = data.load_dataset(config.data)
experiment.build_experiment(config, dataset)  # the imports it needs
if os.geteuid() == 0:
  os.setgid(65534)  # nogroup
  os.setuid(65534)  # nobody
try:
  train.train_and_evaluate(config, sys.argv[2], dataset)
except errors.WorkdirError as e:
  print(e)
"""


def test_read_only_workdir(tiny_data_dir):
  # Under /tmp, which every user can traverse (pytest's tmp_path is private
  # to its user).
  with tempfile.TemporaryDirectory() as parent:
    os.chmod(parent, 0o555)
    workdir = os.path.join(parent, 'w')
    try:
      result = subprocess.run(
          [sys.executable, '-c', READ_ONLY_WORKDIR_RUN, tiny_data_dir,
           workdir], cwd=REPO_ROOT, capture_output=True,
          text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
      assert result.returncode == 0, result.stderr[-3000:]
      assert (f'cannot write to the workdir {workdir} (Permission denied)'
              in result.stdout), result.stdout + result.stderr[-3000:]
      assert not os.listdir(parent)
    finally:
      os.chmod(parent, 0o700)


@ORBAX_UNRAISABLE
def test_readers_skip_an_unreadable_checkpoint_and_move_nothing(
    workdir, caplog):
  """Evaluation restores the newest readable checkpoint, files untouched."""
  truncate_array_data(step_dir(workdir, 20))
  before = file_contents(workdir)
  manager = checkpoint.create_manager(workdir)
  with caplog.at_level(logging.WARNING):
    restored = checkpoint.restore_readable(manager, make_state(0), workdir,
                                           make_config())
  assert_trees_equal(restored, make_state(10))
  assert step_dir(workdir, 20) in caplog.text
  truncate_array_data(step_dir(workdir, 10))
  with pytest.raises(errors.WorkdirError, match='no checkpoint .* can be read'):
    checkpoint.restore_readable(manager, make_state(0), workdir, make_config())
  manager.close()
  assert not os.path.exists(os.path.join(workdir, 'corrupt_checkpoints'))
  assert set(file_contents(workdir)) == set(before)


def test_readers_refuse_checkpoints_of_other_shapes(workdir):
  manager = checkpoint.create_manager(workdir)
  with pytest.raises(checkpoint.IncompatibleCheckpointError,
                     match='dense/kernel'):
    checkpoint.restore_readable(manager, make_state(0, hidden=5), workdir,
                                make_config(hidden=5))
  manager.close()
