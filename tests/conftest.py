"""Shared test fixtures: small generated IDX data sets and experiment configs."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from vaejax import data
from vaejax.configs import loading
from vaejax.data import sources

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def write_tiny_idx_dataset(directory, num_train=256, num_test=64, seed=0):
  """Writes the four IDX .gz files of a small 28x28 data set with 10 classes.

  Images are blurry class-dependent blobs, so a model can learn something.
  """
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  yy, xx = np.mgrid[0:28, 0:28]

  def make(n):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    centres = np.stack([6 + 2 * labels, 20 - labels], axis=1)
    d2 = ((yy[None] - centres[:, 0, None, None]) ** 2
          + (xx[None] - centres[:, 1, None, None]) ** 2)
    images = 255 * np.exp(-d2 / 30.0) + rng.normal(0, 20, (n, 28, 28))
    return np.clip(images, 0, 255).astype(np.uint8), labels

  for prefix, n in (('train', num_train), ('t10k', num_test)):
    images, labels = make(n)
    data.write_idx(os.path.join(directory, f'{prefix}-images-idx3-ubyte.gz'),
                   images)
    data.write_idx(os.path.join(directory, f'{prefix}-labels-idx1-ubyte.gz'),
                   labels)
  return directory


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory):
  return str(write_tiny_idx_dataset(tmp_path_factory.mktemp('tiny_idx')))


def tiny_config(data_dir, experiment='vae', arg='runlocal', **overrides):
  """A runlocal config on the tiny IDX data set, with dotted-key overrides."""
  spec = f'experiments/{experiment}.py' + (f':{arg}' if arg else '')
  defaults = {'data.dir': data_dir, 'data.source': 'idx', 'batch_size': 32,
              'eval.batch_size': 32, 'eval.iwae_batch_size': 32}
  return loading.load_config(spec, **{**defaults, **overrides})


@pytest.fixture
def no_real_data_locations(monkeypatch, tmp_path):
  """Hides the machine's data (IDX directories, TFDS copies), so a test sees
  only the data it writes."""
  monkeypatch.delenv(sources.DATA_DIR_ENV_VAR, raising=False)
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'default_tfds'))
  monkeypatch.setattr(sources, 'SYSTEM_DATA_ROOT',
                      str(tmp_path / 'system_datasets'))


def run_python(*args, env=None, timeout=600):
  """`python <args>` from the checkout, on the CPU; the CompletedProcess."""
  return subprocess.run(
      [sys.executable, *args], cwd=REPO_ROOT,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu', **(env or {})},
      capture_output=True, text=True, timeout=timeout)


def run_module(module, *args, env=None, timeout=600):
  """`python -m <module> <args>` from the checkout, on the CPU."""
  return run_python('-m', module, *args, env=env, timeout=timeout)


def assert_clean_failure(result, *fragments, status=2):
  """The command stopped with `status`, one `vaejax: error:` message holding
  every fragment, and no traceback."""
  assert result.returncode == status, result.stderr[-5000:]
  assert 'Traceback' not in result.stderr, result.stderr[-5000:]
  assert 'vaejax: error:' in result.stderr, result.stderr[-5000:]
  for fragment in fragments:
    assert fragment in result.stderr, (fragment, result.stderr[-5000:])


def tiny_flags(data_dir, **overrides):
  """--config.* flags that point experiments/vae.py:runlocal (or any image
  experiment) at the tiny IDX data set, as `tiny_config` does."""
  flags = {'data.dir': data_dir, 'data.source': 'idx', 'batch_size': 32,
           'eval.batch_size': 32, 'eval.iwae_batch_size': 32, **overrides}
  return [f'--config.{key}={value!r}' if isinstance(value, tuple)
          else f'--config.{key}={value}' for key, value in flags.items()]


# The run that `cli_workdir` trains: checkpoints at steps 10 and 20, a quick
# evaluation of 16 test examples at step 10, 32 validation examples.
CLI_RUN = {'num_train_steps': 20, 'checkpoint_every': 10, 'log_every': 10,
           'steps_per_dispatch': 10, 'eval_every': 10,
           'eval.quick_examples': 16, 'data.validation_size': 32,
           'eval.extras': ('iwae', 'diagnostics'), 'eval.figures': ()}


@pytest.fixture(scope='session')
def cli_workdir(tiny_data_dir, tmp_path_factory):
  """A workdir trained by `python -m vaejax.main` (experiments/vae.py:runlocal
  with CLI_RUN); tests that change it work on a copy."""
  workdir = str(tmp_path_factory.mktemp('cli_run') / 'w')
  result = run_module('vaejax.main', '--config', 'experiments/vae.py:runlocal',
                      '--workdir', workdir,
                      *tiny_flags(tiny_data_dir, **CLI_RUN))
  assert result.returncode == 0, result.stderr[-5000:]
  return workdir
