"""Loading experiment files outside the command line (notebooks, tests).

`load_config('experiments/vae.py:conv,runlocal')` returns what
`--config experiments/vae.py:conv,runlocal` gives `vaejax.main`: the file's
`get_config(arg)`, locked so that a mistyped key is an error.
"""
import importlib.util
import os
import pathlib

import ml_collections
from ml_collections import config_dict

from vaejax import errors

# The checkout that holds this package, where `experiments/` lives.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def parse_variants(arg, known_variants, experiment_file):
  """'conv,beta=4,runlocal' -> {'conv': True, 'beta': '4', 'runlocal': True}.

  The variant string after ':' in `--config experiments/x.py:...`; a name
  not in `known_variants` is an error that lists them.
  """
  variants = {}
  for part in filter(None, (arg or '').split(',')):
    name, _, value = part.partition('=')
    variants[name.strip()] = value.strip() if value else True
  unknown = set(variants) - set(known_variants)
  if unknown:
    raise errors.ConfigError(
        f'Unknown variant(s) {sorted(unknown)} in {experiment_file}:{arg}. '
        f'Known: {tuple(known_variants)}.')
  return variants


def image_data_config(variants, transform, **extra):
  """The `config.data` block shared by the image experiments: Fashion-MNIST
  (MNIST with the `mnist` variant), IDX files found automatically, TFDS as
  the fallback; or the user's own data (vaejax/data/loading.py)."""
  return ml_collections.ConfigDict(dict(
      # 'fashion_mnist', 'mnist', 'npz' (a .npz file at `path`),
      # 'image_folder' (PNG/JPEG under the folder `path`, one sub-folder per
      # class) or the name of a prepared TFDS data set, e.g. 'cifar10'.
      name='mnist' if 'mnist' in variants else 'fashion_mnist',
      path=config_dict.placeholder(str),
      # IDX files of mnist / fashion_mnist; when set, the only place read.
      dir=config_dict.placeholder(str),
      source='auto',
      tfds_data_dir=config_dict.placeholder(str),
      # (height, width) to resize every image to: --config.data.image_size=32,32
      image_size=config_dict.placeholder(tuple),
      # Held out for testing when the data has no test split.
      test_fraction=0.1,
      validation_size=0,
      download_timeout_s=5.0,
      transform=transform,
      **extra))


def resolve_path(path):
  """`path` as given, else relative to the checkout (for notebooks in colab/)."""
  if os.path.exists(path):
    return pathlib.Path(path)
  candidate = REPO_ROOT / path
  if candidate.exists():
    return candidate
  raise errors.ConfigError(
      f'Experiment file {path!r} not found (looked in {os.getcwd()} and '
      f'{REPO_ROOT}). Pass a path like experiments/vae.py.')


def load_config(spec, **overrides):
  """Loads `file.py[:arg]` and applies dotted-key overrides.

  Example: load_config('experiments/vae.py:runlocal', num_train_steps=5,
  **{'model.latent_dim': 2}).
  """
  path, _, arg = spec.partition(':')
  path = resolve_path(path)
  module_spec = importlib.util.spec_from_file_location(
      f'vaejax_experiment_{path.stem}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  config.lock()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    try:
      for parent in parents:
        node = node[parent]
      node[leaf] = value
    except (AttributeError, KeyError) as e:
      # ml_collections: 'Key "x" does not exist ... Other fields present:
      # {...}\nDid you mean "y" instead of "x"?'
      detail = str(e.args[0] if e.args else e)
      hint = detail.splitlines()[-1] if 'Did you mean' in detail else ''
      raise errors.ConfigError(
          f'override {key}={value!r}: {spec} has no key {key!r}. {hint}'
          .strip()) from e
  return config
