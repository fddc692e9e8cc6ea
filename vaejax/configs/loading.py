"""Loading experiment files outside the command line (notebooks, tests).

`load_config('experiments/vae.py:conv,runlocal')` returns what
`--config experiments/vae.py:conv,runlocal` gives `vaejax.main`: the file's
`get_config(arg)`, locked so that a mistyped key is an error.
(`vaejax.experiment` builds an experiment from such a config; the files
themselves are in `experiments/`, built from `vaejax.configs.common`.)
"""
import difflib
import importlib.util
import os
import pathlib

import ml_collections

from vaejax import errors

# The checkout that holds this package, where `experiments/` lives.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def resolve_path(path):
  """`path` as given, else relative to the checkout (for notebooks in colab/)."""
  if os.path.exists(path):
    return pathlib.Path(path)
  candidate = REPO_ROOT / path
  if candidate.exists():
    return candidate
  places = sorted({os.getcwd(), str(REPO_ROOT)})
  raise errors.ConfigError(
      f'Experiment file {path!r} not found (looked in '
      f'{" and ".join(places)}). Pass a path like experiments/vae.py.')


def missing_key(config, key):
  """None if the dotted `key` exists in `config`, else a sentence naming
  the first part that does not and the closest existing key."""
  node, path = config, []
  for part in key.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      where = '.'.join(path) or 'the top level'
      choices = list(node.keys()) if isinstance(
          node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(part, choices, n=1)
      hint = (f' Did you mean {".".join(path + close)}?' if close else
              f' Keys at {where}: {", ".join(sorted(choices))}.')
      return f'there is no key {".".join(path + [part])}.{hint}'
    node, path = node[part], path + [part]
  return None


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
    problem = missing_key(config, key)
    if problem:
      raise errors.ConfigError(
          f'override {key}={value!r}: in {spec} {problem}')
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config
