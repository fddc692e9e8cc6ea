"""The README's "Bad input and faults" table, row by row, through the command
a user types: the exit status, the message, no traceback, and what is left
in the workdir.

`README_ROWS` maps each row to the tests that check it (here or in another
test module); a row added to the README without a test fails
`test_every_readme_row_has_a_command_line_test`.
"""
import importlib
import json
import os
import re
import shutil

import numpy as np
import pytest

from vaejax import data
from checkpoint_test import file_contents
from checkpoint_test import truncate_array_data
from conftest import CLI_RUN
from conftest import REPO_ROOT
from conftest import assert_clean_failure
from conftest import run_module
from conftest import run_python
from conftest import tiny_flags
from multidevice import device_env

EXPERIMENT = 'experiments/vae.py:runlocal'

README_ROWS = {
    'unknown model / objective / likelihood / transform / optimiser / '
    'dataset name': ['test_unknown_name_lists_known_names_and_the_key'],
    'mistyped override (`--config.model.latnt_dim=3`)': [
        'main_test::test_mistyped_override_names_the_key'],
    'wrong value type (`--config.batch_size=many`)': [
        'main_test::test_wrong_value_type'],
    'unknown experiment variant (`experiments/vae.py:convv`)': [
        'main_test::test_unknown_variant'],
    'batch size not divisible by the device count': [
        'test_batch_not_divisible_by_the_device_count',
        'test_more_devices_asked_for_than_visible'],
    'image shape the model cannot take': [
        'test_image_shape_the_model_cannot_take'],
    'data missing': [
        'main_test::test_missing_data_fails_fast_with_what_was_tried'],
    'data file truncated / not IDX': [
        'reliability_test::'
        'test_truncated_data_file_fails_cleanly_on_the_command_line',
        'test_data_file_that_is_not_idx'],
    'images with NaN or out-of-range values / labels': [
        'test_bad_examples_in_idx_files',
        'reliability_test::test_bad_examples_fail_before_training'],
    'workdir not writable': [
        'test_workdir_that_cannot_be_written',
        'checkpoint_test::test_read_only_workdir'],
    'config change that changes parameter shapes on resume': [
        'test_config_change_that_changes_shapes_on_resume'],
    'disk full while checkpointing (simulated)': [
        'test_disk_full_while_checkpointing'],
    'corrupted / truncated latest checkpoint': [
        'test_corrupted_latest_checkpoint_resumes_from_the_one_before'],
    'the same, for `python -m vaejax.evaluate` or `features=vae`': [
        'test_evaluate_uses_the_checkpoint_before_an_unreadable_one',
        'test_features_from_the_checkpoint_before_an_unreadable_one'],
    'loss or gradient norm becomes NaN/inf': ['test_diverging_run'],
    'every update skipped for 100 steps in a row '
    '(`--config.optimizer.skip_update_above_grad_norm` below the run\'s '
    'gradient norms)': [
        'test_stalled_run',
        'reliability_test::'
        'test_updates_all_skipped_stop_the_run_keeping_its_checkpoints'],
    'SIGTERM / Ctrl-C': [
        'reliability_test::test_sigterm_saves_the_step_reached_and_exits_nonzero'],
    'SIGKILL': ['reliability_test::test_sigkill_then_rerun_is_bit_exact'],
    '`python -m vaejax.evaluate` on an empty workdir': [
        'evaluate_test::'
        'test_empty_workdir_fails_cleanly_without_creating_files'],
    'experiment file that does not exist (`--config experiments/nope.py`)': [
        'test_experiment_file_that_does_not_exist'],
    'a numeric setting out of range (`--config.optimizer.learning_rate=-1`, '
    '`--config.model.latent_dim=0`; every numeric key of every experiment '
    'file is tried)': [
        'config_ranges_test::'
        'test_a_negative_learning_rate_is_rejected_by_the_command',
        'config_ranges_test::'
        'test_each_numeric_setting_has_a_range_and_a_bad_value_fails_at_start'],
    '`--config.eval.iwae_samples` not a multiple of `eval.iwae_chunk`': [
        'test_iwae_samples_not_a_multiple_of_the_chunk',
        'evaluate_test::test_k_that_chunks_do_not_divide_is_refused'],
    'a data directory or file you named that holds no data '
    '(`--config.data.dir=/nonexistent`)': [
        'main_test::test_missing_data_fails_fast_with_what_was_tried',
        'data_test::test_config_dir_without_files_is_an_error_not_a_fallback'],
    'an evaluation the model family cannot do (samples of an autoencoder), '
    'or that needs labels the data lacks': [
        'test_evaluations_a_run_cannot_do_are_skipped_with_the_reason'],
}


def readme_bad_input_rows():
  """The first cell of every row of the README's bad-input table."""
  readme = (REPO_ROOT / 'README.md').read_text()
  section = readme.split('## Bad input and faults', 1)[1].split('\n## ', 1)[0]
  rows = [line.split('|')[1].strip() for line in section.splitlines()
          if line.startswith('|')]
  assert rows[:2] == ['what you did', '---'], rows[:2]
  return rows[2:]


def test_every_readme_row_has_a_command_line_test():
  assert sorted(readme_bad_input_rows()) == sorted(README_ROWS)
  for tests in README_ROWS.values():
    for test in tests:
      module_name, _, name = test.rpartition('::')
      module = importlib.import_module(module_name or __name__)
      assert callable(getattr(module, name, None)), test


def run_main(workdir, *flags, data_dir=None, env=None):
  """`python -m vaejax.main` on EXPERIMENT with `flags`."""
  data_flags = tiny_flags(data_dir) if data_dir else []
  return run_module('vaejax.main', '--config', EXPERIMENT, '--workdir',
                    str(workdir), *data_flags, *flags, env=env)


@pytest.fixture
def copied_workdir(cli_workdir, tmp_path):
  """A copy of the CLI-trained workdir (checkpoints 10 and 20)."""
  workdir = str(tmp_path / 'w')
  shutil.copytree(cli_workdir, workdir)
  return workdir


def checkpoint_files(workdir):
  return file_contents(os.path.join(workdir, 'checkpoints'))


def step_path(workdir, step):
  return os.path.join(os.path.abspath(workdir), 'checkpoints', str(step))


# Names.


@pytest.mark.parametrize('key, value, known', [
    ('model.name', 'mlp_vea', ('conv_vae', 'mlp_autoencoder', 'mlp_vae')),
    ('objective.name', 'elbow', ('elbo', 'iwae', 'autoencoder')),
    ('objective.likelihood', 'poisson', ('bernoulli', 'discretized_logistic',
                                         'laplace')),
    ('data.transform', 'binarize', ('dequantize', 'dynamic_binarize',
                                    'scale')),
    ('optimizer.name', 'adamm', ('adam', 'adamw', 'sgd')),
    ('optimizer.schedule', 'cosin', ('constant', 'cosine',
                                     'warmup_constant')),
    ('data.name', 'cifar', ('fashion_mnist', 'mnist')),
    ('eval.extras', ('iwae', 'probe'), ('diagnostics', 'linear_probe')),
    ('eval.figures', ('sample',), ('samples', 'manifold')),
])
def test_unknown_name_lists_known_names_and_the_key(tmp_path, key, value,
                                                     known):
  # The data directory does not exist: the name check must come first.
  flag = f'--config.{key}={value!r}' if isinstance(value, tuple) else (
      f'--config.{key}={value}')
  result = run_main(tmp_path / 'w', flag,
                    f'--config.data.dir={tmp_path / "no_data"}')
  unknown = value[-1] if isinstance(value, tuple) else value
  assert_clean_failure(result, repr(unknown), *known, f'config.{key}')
  assert not os.path.exists(tmp_path / 'w')


# Devices and shapes.


def test_batch_not_divisible_by_the_device_count(tiny_data_dir, tmp_path):
  result = run_main(tmp_path / 'w', '--config.batch_size=30',
                    data_dir=tiny_data_dir, env=device_env(8))
  assert_clean_failure(
      result, 'config.batch_size=30 is not divisible by the number of '
      'devices (8)', 'Choose a multiple of 8', '--config.num_devices')
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')


def test_more_devices_asked_for_than_visible(tiny_data_dir, tmp_path):
  result = run_main(tmp_path / 'w', '--config.num_devices=4',
                    data_dir=tiny_data_dir, env=device_env(2))
  assert_clean_failure(result, 'config.num_devices=4 but only 2 devices')
  assert not os.path.exists(tmp_path / 'w')


@pytest.mark.parametrize('arg, flags, fragments', [
    ('runlocal', ['--config.model.image_shape=(32, 32, 3)'],
     ['(32, 32, 3)', '(28, 28, 1)', 'config.model.image_shape']),
    ('conv,runlocal', ['--config.model.channels=(8, 8, 8)'],
     ['divisible by 8', '(28, 28, 1)', 'config.model.channels']),
])
def test_image_shape_the_model_cannot_take(tiny_data_dir, tmp_path, arg,
                                           flags, fragments):
  result = run_module('vaejax.main', '--config', f'experiments/vae.py:{arg}',
                      '--workdir', str(tmp_path / 'w'),
                      *tiny_flags(tiny_data_dir), *flags)
  assert_clean_failure(result, *fragments)
  assert not os.path.exists(tmp_path / 'w')


# Data.


def test_data_file_that_is_not_idx(tiny_data_dir, tmp_path):
  data_dir = tmp_path / 'data'
  shutil.copytree(tiny_data_dir, data_dir)
  labels = data_dir / 't10k-labels-idx1-ubyte.gz'
  labels.write_text('<html>404 Not Found</html>\n')
  result = run_main(tmp_path / 'w', *tiny_flags(str(data_dir)))
  assert_clean_failure(result, str(labels), 'not an IDX file',
                       're-download')
  assert not os.path.exists(tmp_path / 'w')


def rewrite(directory, file_name, array):
  data.write_idx(os.path.join(directory, file_name), array)


@pytest.mark.parametrize('corrupt, fragments', [
    (lambda d: rewrite(d, 'train-labels-idx1-ubyte.gz',
                       np.full(256, 10, np.uint8)),
     ['train-labels-idx1-ubyte.gz', 'labels range over [10, 10]',
      'expected [0, 9]']),
    (lambda d: rewrite(d, 't10k-images-idx3-ubyte.gz',
                       np.full((64, 28, 28), np.nan, np.float32)),
     ['t10k-images-idx3-ubyte.gz', 'expected uint8 images', 'got float32']),
], ids=['labels', 'float_images'])
def test_bad_examples_in_idx_files(tiny_data_dir, tmp_path, corrupt,
                                   fragments):
  data_dir = str(tmp_path / 'data')
  shutil.copytree(tiny_data_dir, data_dir)
  corrupt(data_dir)
  result = run_main(tmp_path / 'w', *tiny_flags(data_dir))
  assert_clean_failure(result, *fragments)
  assert not os.path.exists(tmp_path / 'w')


# The workdir and its checkpoints.


def test_workdir_that_cannot_be_written(tiny_data_dir, tmp_path):
  (tmp_path / 'file').write_text('')
  workdir = tmp_path / 'file' / 'w'
  result = run_main(workdir, data_dir=tiny_data_dir)
  assert_clean_failure(result, f'cannot write to the workdir {workdir}',
                       'Not a directory')


def test_config_change_that_changes_shapes_on_resume(tiny_data_dir,
                                                     copied_workdir):
  before = file_contents(copied_workdir)
  result = run_main(copied_workdir, '--config.model.latent_dim=8',
                    '--config.num_train_steps=40', data_dir=tiny_data_dir)
  assert_clean_failure(result, 'model.latent_dim (20 -> 8)',
                       'float32[400, 20] in the checkpoint, float32[400, 8] '
                       'now', 'Nothing was changed')
  assert file_contents(copied_workdir) == before


# Stands in for the file orbax writes after a checkpoint's arrays, in the
# command's own process.
DISK_FULL_MAIN = '''
import errno, os, runpy, sys
import orbax.checkpoint as ocp

async def write_fails_with_full_disk(*args, **kwargs):
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

ocp.BasePyTreeCheckpointHandler._write_metadata_file = (
    write_fails_with_full_disk)
sys.argv[0] = 'vaejax.main'
runpy.run_module('vaejax.main', run_name='__main__', alter_sys=True)
'''


def test_disk_full_while_checkpointing(tiny_data_dir, copied_workdir):
  before = checkpoint_files(copied_workdir)
  result = run_python('-c', DISK_FULL_MAIN, '--config', EXPERIMENT,
                      '--workdir', copied_workdir,
                      *tiny_flags(tiny_data_dir, **CLI_RUN),
                      '--config.num_train_steps=40')
  assert_clean_failure(result, 'could not write a checkpoint',
                       'No space left on device', 'latest: step 20',
                       'rerun the same command')
  after = checkpoint_files(copied_workdir)
  for path, content in before.items():
    assert after[path] == content, path


def test_corrupted_latest_checkpoint_resumes_from_the_one_before(
    tiny_data_dir, copied_workdir):
  latest = step_path(copied_workdir, 20)
  truncate_array_data(latest)
  corrupted = file_contents(latest)
  result = run_main(copied_workdir, *tiny_flags(tiny_data_dir, **CLI_RUN),
                    '--config.num_train_steps=30')
  assert result.returncode == 0, result.stderr[-5000:]
  assert re.search(rf'Checkpoint {re.escape(latest)} cannot be read',
                   result.stderr), result.stderr[-5000:]
  assert 'Resumed from' in result.stderr and 'at step 10' in result.stderr
  set_aside = os.path.join(copied_workdir, 'corrupt_checkpoints', '20')
  assert file_contents(set_aside) == corrupted
  assert os.path.isdir(step_path(copied_workdir, 30))


def test_evaluate_uses_the_checkpoint_before_an_unreadable_one(
    copied_workdir):
  truncate_array_data(step_path(copied_workdir, 20))
  before = checkpoint_files(copied_workdir)
  result = run_module('vaejax.evaluate', '--workdir', copied_workdir,
                      '--k', '5', '--extras', 'iwae')
  assert result.returncode == 0, result.stderr[-5000:]
  assert (f'Checkpoint {step_path(copied_workdir, 20)} cannot be read'
          in result.stderr), result.stderr[-5000:]
  path = os.path.join(copied_workdir, 'eval', 'evaluation_step10_test_k5.json')
  assert f'Step 10: wrote {path}' in result.stdout
  with open(path) as f:
    assert json.load(f)['step'] == 10
  # Nothing moved or changed: a reader leaves the workdir to training.
  assert checkpoint_files(copied_workdir) == before
  assert not os.path.exists(os.path.join(copied_workdir,
                                         'corrupt_checkpoints'))


def test_features_from_the_checkpoint_before_an_unreadable_one(
    tiny_data_dir, copied_workdir, tmp_path):
  truncate_array_data(step_path(copied_workdir, 20))
  before = checkpoint_files(copied_workdir)
  result = run_module(
      'vaejax.main', '--config',
      f'experiments/gmm.py:features=vae,workdir={copied_workdir},runlocal',
      '--workdir', str(tmp_path / 'gmm'),
      f'--config.data.dir={tiny_data_dir}', '--config.data.source=idx',
      '--config.batch_size=256', '--config.eval.batch_size=32',
      '--config.num_train_steps=2')
  assert result.returncode == 0, result.stderr[-5000:]
  assert (f'Checkpoint {step_path(copied_workdir, 20)} cannot be read'
          in result.stderr), result.stderr[-5000:]
  assert (f'latent means of the mlp_vae in {copied_workdir} (step 10)'
          in result.stderr), result.stderr[-5000:]
  assert checkpoint_files(copied_workdir) == before
  assert not os.path.exists(os.path.join(copied_workdir,
                                         'corrupt_checkpoints'))


def test_diverging_run(tiny_data_dir, copied_workdir):
  before = checkpoint_files(copied_workdir)
  result = run_main(copied_workdir, *tiny_flags(tiny_data_dir, **CLI_RUN),
                    '--config.num_train_steps=60',
                    '--config.optimizer.learning_rate=1e6')
  assert_clean_failure(result, 'at step', step_path(copied_workdir, 20),
                       status=1)
  assert re.search(r'vaejax: error: (loss|grad_norm) became (nan|inf|-inf) '
                   r'at step (2[1-9]|[3-5]\d|60)\.', result.stderr), (
                       result.stderr[-5000:])
  assert checkpoint_files(copied_workdir) == before  # nothing saved after it


def test_stalled_run(tiny_data_dir, copied_workdir):
  before = checkpoint_files(copied_workdir)
  result = run_main(copied_workdir, *tiny_flags(tiny_data_dir, **CLI_RUN),
                    '--config.num_train_steps=200',
                    '--config.checkpoint_every=200',
                    '--config.optimizer.skip_update_above_grad_norm=1e-6')
  assert_clean_failure(
      result, 'vaejax: error: The 100 updates up to step 120 were all '
      'skipped', 'skip_update_above_grad_norm=1e-06',
      step_path(copied_workdir, 20), status=1)
  assert checkpoint_files(copied_workdir) == before


def test_experiment_file_that_does_not_exist(tmp_path):
  result = run_module('vaejax.main', '--config', 'experiments/nope.py',
                      '--workdir', str(tmp_path / 'w'))
  assert_clean_failure(result, "'experiments/nope.py' not found",
                       'The experiment files are in experiments/.')
  assert 'config_config' not in result.stderr
  assert not (tmp_path / 'w').exists()


def test_iwae_samples_not_a_multiple_of_the_chunk(tiny_data_dir, tmp_path):
  # runlocal draws IWAE samples in chunks of 25: refused before training.
  result = run_main(tmp_path / 'w', '--config.eval.iwae_samples=30',
                    data_dir=tiny_data_dir)
  assert_clean_failure(result, 'config.eval.iwae_samples=30',
                       'config.eval.iwae_chunk=25', '--config.eval.iwae_chunk')
  assert not (tmp_path / 'w').exists()


def test_evaluations_a_run_cannot_do_are_skipped_with_the_reason(tmp_path):
  """An autoencoder cannot sample and unlabelled data has no probe: both are
  one log line each, and the rest of the evaluation runs."""
  images = np.random.default_rng(0).integers(0, 256, (320, 16, 16), np.uint8)
  np.savez(tmp_path / 'unlabelled.npz', images=images)
  workdir = tmp_path / 'w'
  result = run_module(
      'vaejax.main', '--config', 'experiments/ae.py:runlocal', '--workdir',
      str(workdir), '--config.data.name=npz',
      f'--config.data.path={tmp_path / "unlabelled.npz"}',
      '--config.batch_size=16', '--config.eval.batch_size=16',
      '--config.num_train_steps=4', '--config.steps_per_dispatch=2',
      "--config.eval.figures=('samples', 'reconstructions')",
      "--config.eval.extras=('linear_probe', 'denoising')")
  assert result.returncode == 0, result.stderr[-5000:]
  assert ("Skipping the figure 'samples': mlp_autoencoder cannot sample"
          in result.stderr), result.stderr[-5000:]
  assert ("Skipping the evaluation 'linear_probe': .npz file "
          f"{tmp_path / 'unlabelled.npz'} has no class labels"
          in result.stderr), result.stderr[-5000:]
  with open(workdir / 'eval' / 'metrics.json') as f:
    metrics = json.load(f)
  assert 'psnr_denoised_gaussian_0.3' in metrics
  assert not any(key.startswith('probe') for key in metrics)
  assert os.listdir(workdir / 'images') == [
      'reconstructions_step0000004.png']
