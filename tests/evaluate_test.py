"""The evaluation command on a runlocal workdir: outputs, identical numbers on
a second evaluation, clean errors; and the diagnostics' statistics."""
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from vaejax import errors
from vaejax import evaluate
from vaejax import train
from vaejax.evaluators import latents
from conftest import REPO_ROOT
from conftest import tiny_config

ALL_EXTRAS = ('iwae', 'diagnostics', 'linear_probe', 'clustering')
NUM_SAMPLES = 10


def run_evaluate(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run(
      [sys.executable, '-m', 'vaejax.evaluate', *args], cwd=REPO_ROOT,
      env=env, capture_output=True, text=True, timeout=300)


def assert_clean_failure(result, *fragments):
  assert result.returncode == 2, result.stderr
  assert 'Traceback' not in result.stderr, result.stderr
  assert 'vaejax: error:' in result.stderr, result.stderr
  for fragment in fragments:
    assert fragment in result.stderr, result.stderr


@pytest.fixture(scope='module')
def trained_workdir(tiny_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('trained'))
  # No extras at the end of training: the command runs them below.
  config = tiny_config(tiny_data_dir, num_train_steps=10,
                       **{'eval.extras': ()})
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope='module')
def command_run(trained_workdir):
  """`python -m vaejax.evaluate` with every extra, as a user would run it."""
  with open(os.path.join(trained_workdir, 'eval', 'metrics.json')) as f:
    training_metrics = f.read()
  result = run_evaluate('--workdir', trained_workdir, '--k', str(NUM_SAMPLES),
                        '--extras', ','.join(ALL_EXTRAS))
  assert result.returncode == 0, result.stderr
  return result, training_metrics


def test_command_writes_metrics_pngs_and_tensorboard(trained_workdir,
                                                      command_run):
  result, training_metrics = command_run
  eval_dir = os.path.join(trained_workdir, 'eval')
  path = os.path.join(eval_dir, f'evaluation_step10_test_k{NUM_SAMPLES}.json')
  with open(path) as f:
    metrics = json.load(f)
  with open(os.path.join(eval_dir, 'evaluation.json')) as f:
    assert json.load(f) == metrics
  # The train loop's own record is left as it was.
  with open(os.path.join(eval_dir, 'metrics.json')) as f:
    assert f.read() == training_metrics
  assert metrics['step'] == 10
  assert metrics['iwae_samples'] == NUM_SAMPLES
  for name in ('nll_iwae', 'nll_elbo', 'bits_per_dim_iwae', 'active_units',
               'kl_dim_00', 'reconstruction_mse', 'reconstruction_nll_at_mean',
               'probe_accuracy_latent', 'probe_accuracy_pixels',
               'kmeans_accuracy_latent', 'gmm_accuracy_latent',
               'kmeans_accuracy_pixel_pca', 'gmm_accuracy_pixel_pca'):
    assert np.isfinite(metrics[name]), name
  for name in ('probe_accuracy_latent', 'kmeans_accuracy_pixel_pca'):
    assert 0.0 <= metrics[name] <= 1.0
  assert path in result.stdout and 'nll_iwae' in result.stdout
  for name in ('reconstructions', 'samples', 'traversals', 'pca_scatter'):
    assert os.path.exists(os.path.join(trained_workdir, 'images',
                                       f'{name}_step0000010.png')), name

  accumulator = event_accumulator.EventAccumulator(
      os.path.join(trained_workdir, 'tensorboard', 'evaluate'),
      size_guidance={event_accumulator.IMAGES: 0,
                     event_accumulator.SCALARS: 0})
  accumulator.Reload()
  assert accumulator.Scalars('test/nll_iwae')[-1].value == pytest.approx(
      metrics['nll_iwae'], rel=1e-6)
  assert {'images/traversals', 'images/pca_scatter'} <= set(
      accumulator.Tags()['images'])


def test_evaluating_again_gives_identical_numbers(trained_workdir,
                                                   command_run):
  del command_run  # The command's numbers are the first evaluation.
  path = os.path.join(trained_workdir, 'eval',
                      f'evaluation_step10_test_k{NUM_SAMPLES}.json')
  with open(path) as f:
    first = json.load(f)
  again = evaluate.evaluate_checkpoint(trained_workdir, NUM_SAMPLES,
                                       extras=ALL_EXTRAS)
  assert again['metrics_path'] == path
  with open(path) as f:
    assert json.load(f) == first
  assert {'step': 10, **again['metrics']} == first


def test_kl_per_dimension_sums_to_the_kl(trained_workdir, command_run):
  del command_run
  with open(os.path.join(trained_workdir, 'eval', 'evaluation.json')) as f:
    metrics = json.load(f)
  kl_dims = [v for k, v in metrics.items() if k.startswith('kl_dim_')]
  assert len(kl_dims) == metrics['latent_dims'] == 20
  assert sum(kl_dims) == pytest.approx(metrics['kl'], rel=1e-5)
  assert 0 <= metrics['active_units'] <= metrics['latent_dims']


def test_empty_workdir_fails_cleanly_without_creating_files(tmp_path):
  result = run_evaluate('--workdir', str(tmp_path))
  assert_clean_failure(result, 'config.json', 'python -m vaejax.main')
  assert not os.listdir(tmp_path)


def test_missing_workdir_flag_fails_cleanly():
  assert_clean_failure(run_evaluate(), '--workdir')


def test_workdir_without_checkpoint_fails_without_creating_files(
    trained_workdir, tmp_path):
  shutil.copy(os.path.join(trained_workdir, 'config.json'), tmp_path)
  with pytest.raises(errors.UserError, match='no checkpoint'):
    evaluate.evaluate_checkpoint(str(tmp_path))
  assert os.listdir(tmp_path) == ['config.json']
  missing = tmp_path / 'missing'
  with pytest.raises(errors.UserError, match='does not exist'):
    evaluate.evaluate_checkpoint(str(missing))
  assert not missing.exists()


def test_k_that_chunks_do_not_divide_is_refused(trained_workdir):
  # runlocal draws IWAE samples in chunks of 25.
  with pytest.raises(errors.ConfigError, match='--k=30'):
    evaluate.evaluate_checkpoint(trained_workdir, iwae_samples=30)
  assert not glob.glob(os.path.join(trained_workdir, 'eval', '*k30*'))


def test_active_units_counts_dimensions_whose_means_vary():
  rng = np.random.default_rng(0)
  means = np.zeros((5000, 6))
  means[:, 1] = rng.normal(0.0, 1.0, 5000)  # variance 1: active
  means[:, 3] = rng.normal(2.0, 0.2, 5000)  # variance 0.04: active
  means[:, 4] = rng.normal(-1.0, 0.05, 5000)  # variance 0.0025: collapsed
  assert latents.active_units(means) == 2
  assert latents.active_units(means, threshold=0.001) == 3
  assert latents.active_units(means, threshold=0.5) == 1


def test_unknown_extras_name_the_flag_of_this_command(trained_workdir):
  before = sorted(os.listdir(os.path.join(trained_workdir, 'eval')))
  result = run_evaluate('--workdir', trained_workdir, '--extras', 'probe')
  assert_clean_failure(result, "--extras: unknown evaluation(s) probe",
                       'linear_probe', '--extras=iwae,linear_probe')
  # Not the training command's flag, which this command rejects.
  assert '--config.eval.extras' not in result.stderr
  assert sorted(os.listdir(os.path.join(trained_workdir, 'eval'))) == before


def test_validation_split_of_a_run_without_one_says_to_retrain(
    trained_workdir):
  result = run_evaluate('--workdir', trained_workdir, '--split', 'validation')
  assert_clean_failure(result, 'this run has none',
                       'config.data.validation_size=0',
                       'Train a new run with --config.data.validation_size=N')


def test_max_examples_evaluates_the_first_n_and_names_its_file(
    trained_workdir, command_run):
  del command_run  # Its evaluation of all 64 test images is compared to.
  with open(os.path.join(trained_workdir, 'eval',
                         f'evaluation_step10_test_k{NUM_SAMPLES}.json')) as f:
    full = json.load(f)
  assert full['eval_examples'] == 64
  # All of them, asked for by number: the same numbers, in its own file.
  everything = evaluate.evaluate_checkpoint(
      trained_workdir, NUM_SAMPLES, extras=('iwae',), max_examples=64)
  assert everything['metrics_path'].endswith(
      f'evaluation_step10_test_k{NUM_SAMPLES}_n64.json')
  for name in ('nll_iwae', 'nll_elbo', 'kl'):
    assert everything['metrics'][name] == full[name], name
  result = run_evaluate('--workdir', trained_workdir, '--k', '5',
                        '--extras', 'iwae', '--max_examples', '16')
  assert result.returncode == 0, result.stderr
  path = os.path.join(trained_workdir, 'eval',
                      'evaluation_step10_test_k5_n16.json')
  assert path in result.stdout
  with open(path) as f:
    first_16 = json.load(f)
  assert first_16['eval_examples'] == 16
  assert first_16['nll_iwae'] != full['nll_iwae']
