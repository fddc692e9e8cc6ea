"""Shared test fixtures: small generated IDX data sets and experiment configs."""
import importlib.util
import os
import pathlib

import numpy as np
import pytest

from vaejax import data

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_experiment(name, arg=None):
  """`get_config(arg)` of experiments/<name>.py, as main.py would load it."""
  path = REPO_ROOT / 'experiments' / f'{name}.py'
  spec = importlib.util.spec_from_file_location(f'experiment_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


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
  config = load_experiment(experiment, arg)
  config.data.dir = data_dir
  config.data.source = 'idx'
  config.batch_size = 32
  config.eval.batch_size = 32
  config.eval.iwae_batch_size = 32
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config
