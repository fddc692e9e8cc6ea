"""Whatever happens to a run, it finishes or stops with a clear message, and
nothing already computed is lost: kills and signals (resumed runs are bit
for bit the uninterrupted one), unreadable or incompatible checkpoints,
divergence, a full disk, bad data, and the same numbers from the same seed.

Checkpoint faults on a synthetic state are in checkpoint_test.py; the other
bad-input cases are in main_test.py, data_test.py, sharding_test.py and
evaluate_test.py.
"""
import dataclasses
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from vaejax import checkpoint
from vaejax import data
from vaejax import errors
from vaejax import evaluators
from vaejax import experiment
from vaejax import faults
from vaejax import stages
from vaejax import train
from vaejax import workdir as workdir_lib
from vaejax.configs import loading
from checkpoint_test import ORBAX_UNRAISABLE
from checkpoint_test import file_contents
from checkpoint_test import truncate_array_data
from checkpoint_test import write_fails_with_full_disk
from conftest import REPO_ROOT
from conftest import tiny_config

EXPERIMENT = 'experiments/vae.py:runlocal'
# The final evaluation without extras and figures: these tests are about
# training.
FAST_EVAL = {'eval.extras': (), 'eval.figures': ()}
# Long enough to be killed between its first checkpoint and its end.
LONG_RUN = {'num_train_steps': 400, 'checkpoint_every': 50, 'log_every': 50,
            'steps_per_dispatch': 10, **FAST_EVAL}
SHORT_RUN = {'num_train_steps': 20, 'checkpoint_every': 10, 'log_every': 10,
             'steps_per_dispatch': 10, **FAST_EVAL}


def flatten(tree, prefix=''):
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[prefix + key] = value
  return flat


def main_command(config, workdir):
  """`python -m vaejax.main` with the --config.* flags that turn
  experiments/vae.py:runlocal into `config`."""
  base = flatten(loading.load_config(EXPERIMENT).to_dict())
  flags = [f'--config.{key}={value!r}' if isinstance(value, tuple)
           else f'--config.{key}={value}'
           for key, value in flatten(config.to_dict()).items()
           if base[key] != value]
  return [sys.executable, '-m', 'vaejax.main', '--config', EXPERIMENT,
          '--workdir', workdir, *flags]


def start(command, log_path):
  with open(log_path, 'w') as log:
    return subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=log,
                            env=dict(os.environ, JAX_PLATFORMS='cpu'))


def read(path):
  with open(path) as f:
    return f.read()


def wait_for_checkpoint(process, workdir, step, log_path, timeout=600):
  """Waits until checkpoint `step` is complete (orbax renames it into place)."""
  path = os.path.join(workdir_lib.checkpoint_dir(workdir), str(step))
  deadline = time.monotonic() + timeout
  while not os.path.isdir(path):
    assert process.poll() is None, read(log_path)
    if time.monotonic() > deadline:
      process.kill()
      pytest.fail(f'no checkpoint {path} after {timeout} s')
    time.sleep(0.02)
  assert process.poll() is None, 'the run ended before it could be killed'


def checkpoint_steps(workdir):
  return sorted(int(name) for name in os.listdir(
      workdir_lib.checkpoint_dir(workdir)) if name.isdigit())


def final_state(config, workdir):
  """The latest checkpoint of `workdir`, restored for `config`."""
  exp = stages.build_experiment(config)
  manager = checkpoint.create_manager(workdir)
  state = checkpoint.restore_latest(manager, experiment.init_state(exp))
  manager.close()
  return state


def assert_states_equal(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope='module')
def long_config(tiny_data_dir):
  return tiny_config(tiny_data_dir, **LONG_RUN)


@pytest.fixture(scope='module')
def reference(long_config, tmp_path_factory):
  """The uninterrupted run that interrupted ones must match, bit for bit."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  result = train.train_and_evaluate(long_config, workdir)
  return workdir, result


@pytest.fixture(scope='module')
def short_workdir(tiny_data_dir, tmp_path_factory):
  """A 20-step run with checkpoints at steps 10 and 20; tests copy it."""
  workdir = str(tmp_path_factory.mktemp('short'))
  train.train_and_evaluate(tiny_config(tiny_data_dir, **SHORT_RUN), workdir)
  return workdir


@pytest.fixture
def copied_workdir(short_workdir, tmp_path):
  workdir = str(tmp_path / 'w')
  shutil.copytree(short_workdir, workdir)
  return workdir


# Preemption.


def test_sigkill_then_rerun_is_bit_exact(long_config, reference, tmp_path):
  workdir, log_path = str(tmp_path / 'w'), str(tmp_path / 'killed.log')
  command = main_command(long_config, workdir)
  process = start(command, log_path)
  wait_for_checkpoint(process, workdir, 50, log_path)
  process.send_signal(signal.SIGKILL)
  assert process.wait() == -signal.SIGKILL
  assert checkpoint_steps(workdir)[-1] < long_config.num_train_steps

  rerun = subprocess.run(command, cwd=REPO_ROOT, capture_output=True,
                         text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert rerun.returncode == 0, rerun.stderr
  assert 'Resumed from' in rerun.stderr
  assert_states_equal(final_state(long_config, workdir),
                      final_state(long_config, reference[0]))


def test_sigterm_saves_the_step_reached_and_exits_nonzero(
    long_config, reference, tmp_path):
  workdir, log_path = str(tmp_path / 'w'), str(tmp_path / 'terminated.log')
  process = start(main_command(long_config, workdir), log_path)
  wait_for_checkpoint(process, workdir, 50, log_path)
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=300) == 128 + signal.SIGTERM
  log = read(log_path)
  assert 'Traceback' not in log, log
  stopped = re.search(r'vaejax: stopped: SIGTERM received: saved a checkpoint '
                      r'at step (\d+) in (\S+)\. Rerun the same command', log)
  assert stopped, log
  step = int(stopped.group(1))
  assert 50 <= step < long_config.num_train_steps
  assert checkpoint_steps(workdir)[-1] == step
  assert stopped.group(2) == os.path.join(workdir_lib.checkpoint_dir(workdir),
                                          str(step))

  train.train_and_evaluate(long_config, workdir)
  assert_states_equal(final_state(long_config, workdir),
                      final_state(long_config, reference[0]))


# Reproducibility.


def train_scalars(workdir):
  accumulator = event_accumulator.EventAccumulator(
      os.path.join(workdir, 'tensorboard'),
      size_guidance={event_accumulator.SCALARS: 0})
  accumulator.Reload()
  return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
          for tag in accumulator.Tags()['scalars']
          if tag.startswith('train/') and not tag.endswith('_per_s')}


def test_same_config_and_seed_give_identical_metrics(long_config, reference,
                                                     tmp_path):
  reference_workdir, reference_result = reference
  again = train.train_and_evaluate(long_config, str(tmp_path))
  scalars = train_scalars(str(tmp_path))
  assert 'train/loss' in scalars and 'train/grad_norm' in scalars
  assert scalars == train_scalars(reference_workdir)
  metrics = dict(again['metrics'])
  reference_metrics = dict(reference_result['metrics'])
  del metrics['train_seconds_this_run']
  del reference_metrics['train_seconds_this_run']
  assert metrics == reference_metrics
  assert_states_equal(again['state'], reference_result['state'])


def test_repeated_evaluation_gives_identical_numbers(long_config, reference):
  _, result = reference
  evaluator = evaluators.build(stages.build_experiment(long_config))
  step = long_config.num_train_steps
  first = evaluator.evaluate(result['state'], step)
  assert evaluator.evaluate(result['state'], step) == first
  # Another Evaluator (the train loop's) drew the same keys.
  expected = dict(result['metrics'])
  del expected['train_seconds_this_run']
  assert first == expected


# Checkpoints.


@ORBAX_UNRAISABLE
def test_unreadable_latest_checkpoint_resumes_from_the_one_before(
    tiny_data_dir, copied_workdir, caplog):
  latest = os.path.join(workdir_lib.checkpoint_dir(copied_workdir), '20')
  truncate_array_data(latest)
  config = tiny_config(tiny_data_dir, **{**SHORT_RUN, 'num_train_steps': 30})
  with caplog.at_level(logging.INFO):
    result = train.train_and_evaluate(config, copied_workdir)
  assert latest in caplog.text and 'cannot be read' in caplog.text
  assert 'at step 10' in caplog.text  # resumed from the one before
  assert int(result['state']['step']) == 30
  assert os.path.isdir(os.path.join(copied_workdir, 'corrupt_checkpoints',
                                    '20'))


def test_config_that_changes_shapes_stops_before_touching_the_workdir(
    tiny_data_dir, copied_workdir):
  before = file_contents(copied_workdir)
  config = tiny_config(tiny_data_dir, **{**SHORT_RUN, 'model.latent_dim': 8,
                                         'num_train_steps': 40})
  with pytest.raises(checkpoint.IncompatibleCheckpointError) as info:
    train.train_and_evaluate(config, copied_workdir)
  message = str(info.value)
  assert 'model.latent_dim (20 -> 8)' in message
  assert re.search(r'params/encoder/\w+/kernel: float32\[400, 20\] in the '
                   r'checkpoint, float32\[400, 8\] now', message), message
  assert file_contents(copied_workdir) == before


def test_harmless_config_changes_resume(tiny_data_dir, copied_workdir):
  config = tiny_config(tiny_data_dir, **{
      **SHORT_RUN, 'num_train_steps': 30, 'log_every': 5,
      'optimizer.learning_rate': 5e-4, 'eval.max_examples': 32})
  result = train.train_and_evaluate(config, copied_workdir)
  assert int(result['state']['step']) == 30
  assert checkpoint_steps(copied_workdir) == [10, 20, 30]


# Non-finite values.


def test_diverging_run_stops_naming_step_and_metric(tiny_data_dir,
                                                    copied_workdir):
  checkpoints = workdir_lib.checkpoint_dir(copied_workdir)
  before = file_contents(checkpoints)
  config = tiny_config(tiny_data_dir, **{
      **SHORT_RUN, 'num_train_steps': 60, 'optimizer.learning_rate': 1e6})
  with pytest.raises(faults.NonFiniteError) as info:
    train.train_and_evaluate(config, copied_workdir)
  stopped = re.match(r'(loss|grad_norm) became (nan|inf|-inf) at step (\d+)\.',
                     str(info.value))
  assert stopped, str(info.value)
  assert 20 < int(stopped.group(3)) <= 60
  assert os.path.join(checkpoints, '20') in str(info.value)
  assert file_contents(checkpoints) == before  # nothing saved after it


def test_skip_update_above_grad_norm_counts_and_skips(tiny_data_dir,
                                                      tmp_path):
  config = tiny_config(tiny_data_dir, **{
      **SHORT_RUN, 'num_train_steps': 10,
      'optimizer.skip_update_above_grad_norm': 1e-6})
  result = train.train_and_evaluate(config, str(tmp_path))
  initial = experiment.init_state(stages.build_experiment(config))
  # Every gradient norm is above 1e-6: no update was applied.
  assert_states_equal(result['state']['params'], initial['params'])
  assert_states_equal(result['state']['opt_state'], initial['opt_state'])
  assert train_scalars(str(tmp_path))['train/skipped_updates'] == [(10, 10.0)]


def test_updates_all_skipped_stop_the_run_keeping_its_checkpoints(
    tiny_data_dir, copied_workdir):
  checkpoints = workdir_lib.checkpoint_dir(copied_workdir)
  before = file_contents(checkpoints)
  # From the copied checkpoint at step 20, every update is skipped (every
  # gradient norm is above 1e-6): the run stops at step 120, not at 400.
  config = tiny_config(tiny_data_dir, **{
      **SHORT_RUN, 'num_train_steps': 400, 'checkpoint_every': 200,
      'optimizer.skip_update_above_grad_norm': 1e-6})
  with pytest.raises(faults.StalledError) as info:
    train.train_and_evaluate(config, copied_workdir)
  message = str(info.value)
  assert message.startswith(
      f'The {faults.MAX_CONSECUTIVE_SKIPS} updates up to step '
      f'{20 + faults.MAX_CONSECUTIVE_SKIPS} were all skipped'), message
  assert 'skip_update_above_grad_norm=1e-06' in message
  assert os.path.join(checkpoints, '20') in message
  assert file_contents(checkpoints) == before  # nothing saved after it


@pytest.mark.parametrize('skipped, before, expected', [
    ([0, 1, 1], 0, 2),      # a run of 2 ends the chunk
    ([1, 1, 0], 5, 0),      # an applied update ends the run
    ([1, 1, 1], 50, 53),    # runs carry over chunks
    ([0, 0, 0], 99, 0),
])
def test_consecutive_skips_are_counted_across_chunks(skipped, before,
                                                     expected):
  metrics = {'skipped_updates': np.array(skipped, np.float32),
             'grad_norm': np.full(len(skipped), 5.0)}
  assert faults.check_updates_applied(metrics, 0, before, 1.0) == expected
  assert faults.check_updates_applied({'grad_norm': [5.0]}, 0, 7, 0) == 0


def test_stall_message_names_the_step_norms_and_a_threshold_to_use():
  limit = faults.MAX_CONSECUTIVE_SKIPS
  # 3 applied, then `limit` skipped: the limit is reached at step 1000 + 3 +
  # limit; the norms of the skipped steps are 2000..2000 + limit - 1.
  skipped = np.r_[np.zeros(3), np.ones(limit + 5)]
  norms = np.r_[np.full(3, 10.0), 2000.0 + np.arange(limit + 5)]
  with pytest.raises(faults.StalledError) as info:
    faults.check_updates_applied(
        {'skipped_updates': skipped, 'grad_norm': norms}, 1000, 0, 1000.0)
  message = str(info.value)
  median = np.median(2000.0 + np.arange(limit))
  assert f'up to step {1003 + limit} were all skipped' in message
  assert f'median {median:.4g}, smallest 2000)' in message
  assert 'no checkpoint had been written yet' in message
  # 4 x the median, rounded up to one significant digit.
  assert 'skip_update_above_grad_norm=9000,' in message


# A full disk.


def test_full_disk_during_checkpoint_stops_and_keeps_earlier_ones(
    tiny_data_dir, copied_workdir, monkeypatch):
  checkpoints = workdir_lib.checkpoint_dir(copied_workdir)
  before = file_contents(checkpoints)
  monkeypatch.setattr(
      checkpoint.ocp.BasePyTreeCheckpointHandler, '_write_metadata_file',
      write_fails_with_full_disk)
  config = tiny_config(tiny_data_dir, **{**SHORT_RUN, 'num_train_steps': 40})
  with pytest.raises(checkpoint.CheckpointWriteError) as info:
    train.train_and_evaluate(config, copied_workdir)
  message = str(info.value)
  assert 'No space left on device' in message
  assert 'latest: step 20' in message and 'rerun the same command' in message
  for step in ('10', '20'):
    assert {path: content for path, content in file_contents(
        checkpoints).items() if path.startswith(step + os.sep)} == {
            path: content for path, content in before.items()
            if path.startswith(step + os.sep)}


# Bad input.


def test_truncated_data_file_fails_cleanly_on_the_command_line(
    tiny_data_dir, tmp_path):
  data_dir = str(tmp_path / 'data')
  shutil.copytree(tiny_data_dir, data_dir)
  images = os.path.join(data_dir, 'train-images-idx3-ubyte.gz')
  os.truncate(images, os.path.getsize(images) // 2)
  workdir = str(tmp_path / 'w')
  config = tiny_config(data_dir, **SHORT_RUN)
  result = subprocess.run(main_command(config, workdir), cwd=REPO_ROOT,
                          capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 2, result.stderr
  assert 'Traceback' not in result.stderr, result.stderr
  assert f'vaejax: error: {images}: corrupt gzip data' in result.stderr
  assert 're-download or reinstall the file' in result.stderr
  assert not os.path.exists(workdir)


def with_train_split(dataset, images=None, labels=None):
  train_split = data.Split(
      dataset.train.images if images is None else images,
      dataset.train.labels if labels is None else labels)
  return dataclasses.replace(dataset, train=train_split)


def nan_features(dataset):
  features = dataset.train.images.astype(np.float32) / 255
  features[7, 3, 4, 0] = np.nan
  features[9, 0, 0, 0] = np.inf
  return with_train_split(dataset, images=features)


def float_pixels(dataset):
  return with_train_split(dataset,
                          images=dataset.train.images.astype(np.float32) / 255)


def labels_out_of_range(dataset):
  labels = dataset.train.labels.copy()
  labels[3] = 10
  return with_train_split(dataset, labels=labels)


@pytest.mark.parametrize('corrupt, transform, message', [
    (nan_features, 'features',
     r'train split .*: 2 of 256 examples contain NaN or inf \(the first: '
     r'example 7\)'),
    (float_pixels, 'dynamic_binarize',
     r"train split .*: images are float32, but config.data.transform="
     r"'dynamic_binarize' expects uint8 pixels in 0..255"),
    (labels_out_of_range, 'dynamic_binarize',
     r'train split .*: labels range over \[0, 10\], expected classes 0..9'),
])
def test_bad_examples_fail_before_training(tiny_data_dir, tmp_path, corrupt,
                                           transform, message):
  config = tiny_config(tiny_data_dir, **{**SHORT_RUN,
                                         'data.transform': transform})
  dataset = corrupt(data.load_dataset(config.data))
  with pytest.raises(data.DataError, match=message):
    train.train_and_evaluate(config, str(tmp_path / 'w'), dataset)
  assert not os.path.exists(tmp_path / 'w')


def test_workdir_that_cannot_be_written_fails_before_training(tiny_data_dir,
                                                              tmp_path):
  (tmp_path / 'file').write_text('')
  config = tiny_config(tiny_data_dir, **SHORT_RUN)
  with pytest.raises(errors.WorkdirError,
                     match='cannot write to the workdir .*file/w'):
    train.train_and_evaluate(config, str(tmp_path / 'file' / 'w'))
