"""The layout of a workdir, its saved config and its metric files.

  W/config.json                the experiment config of the run
  W/checkpoints/<step>/        orbax checkpoints (`vaejax.checkpoint`)
  W/corrupt_checkpoints/       unreadable checkpoints set aside on resume
  W/eval/metrics.json          the train loop's final evaluation
  W/eval/evaluation*.json      `python -m vaejax.evaluate` results
  W/images/<name>_step<S>.png  figures
  W/tensorboard/               TensorBoard events (W/tensorboard/evaluate for
                               the evaluation command)

Restoring the trained experiment of a workdir is `vaejax.stages.restore`:
an experiment may be built on another workdir (a first stage), and that
recursion lives in one module.
"""
import glob
import json
import os

import ml_collections

from vaejax import errors
from vaejax.configs import common

CONFIG_FILE = 'config.json'
CORRUPT_DIR_NAME = 'corrupt_checkpoints'
FINAL_METRICS = 'metrics.json'
LATEST_EVALUATION = 'evaluation.json'


def checkpoint_dir(workdir):
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def corrupt_dir(workdir):
  return os.path.join(os.path.abspath(workdir), CORRUPT_DIR_NAME)


def config_path(workdir):
  return os.path.join(workdir, CONFIG_FILE)


def eval_dir(workdir):
  return os.path.join(workdir, 'eval')


def metrics_path(workdir, name=FINAL_METRICS):
  return os.path.join(eval_dir(workdir), name)


def image_path(workdir, name, step):
  return os.path.join(workdir, 'images', f'{name}_step{int(step):07d}.png')


def tensorboard_dir(workdir, run=None):
  directory = os.path.join(workdir, 'tensorboard')
  return os.path.join(directory, run) if run else directory


def save_config(workdir, config):
  """Writes config.json atomically (write to a temporary file, then rename)."""
  path = config_path(workdir)
  tmp = path + '.tmp'
  try:
    with open(tmp, 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(tmp, path)
  except OSError as e:
    raise errors.WorkdirError(
        f'cannot write {path} ({e.strerror or e}). Free space or fix the '
        f'permissions of the workdir, then rerun the same command.') from e


def load_config_dict(workdir):
  """The saved config of a workdir as a plain dict, or None."""
  path = config_path(workdir)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _lists_to_tuples(value):
  """JSON arrays back to the tuples experiment files write."""
  if isinstance(value, dict):
    return {k: _lists_to_tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_lists_to_tuples(v) for v in value)
  return value


def load_config(workdir):
  """The experiment config saved in `workdir/config.json` as a ConfigDict.

  Configs saved before a key joined the schema get that key's value from
  `vaejax.configs.common.complete_saved_config` (the value the library used
  then), so older workdirs keep evaluating and resuming.
  """
  if not os.path.isdir(workdir):
    raise errors.UserError(
        f'workdir {workdir} does not exist. Pass the --workdir of a training '
        f'run (python -m vaejax.main --config ... --workdir {workdir}).')
  saved = load_config_dict(workdir)
  if saved is None:
    raise errors.UserError(
        f'{workdir} has no config.json, so no training run has started '
        f'there. Train first: python -m vaejax.main --config '
        f'experiments/vae.py --workdir {workdir}')
  return common.complete_saved_config(
      ml_collections.ConfigDict(_lists_to_tuples(saved)))


def write_metrics_json(workdir, step, metrics, name=FINAL_METRICS):
  """Writes eval metrics to workdir/eval/<name> atomically."""
  path = metrics_path(workdir, name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  record = {'step': int(step),
            **{k: float(v) for k, v in sorted(metrics.items())}}
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f, indent=2)
  os.replace(path + '.tmp', path)
  return path


def read_metrics_json(workdir, name=FINAL_METRICS):
  """The metrics written by `write_metrics_json` (with 'step'), or None."""
  path = metrics_path(workdir, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def figure_paths(workdir, step):
  """The PNG paths of the figures drawn at `step`."""
  return sorted(glob.glob(image_path(workdir, '*', step)))
