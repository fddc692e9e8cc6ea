"""Every numeric setting of every experiment file is range-checked before
any data is loaded (vaejax/configs/common.py RANGES)."""
import subprocess
import sys

import ml_collections
import pytest

from conftest import REPO_ROOT
from vaejax import data
from vaejax import errors
from vaejax import stages
from vaejax.configs import common
from vaejax.configs import loading

EXPERIMENTS = ('experiments/vae.py', 'experiments/hvae.py',
               'experiments/ae.py', 'experiments/gmm.py:classifier',
               'experiments/classifier.py', 'experiments/mae.py',
               'experiments/vqvae.py:ema',
               'experiments/pixelcnn_prior.py:workdir=/nonexistent')
# Numbers with no range to check: any seed, a log-scale floor, class ids,
# shapes, a clipping interval of log-variances (any sign; its builder checks
# low < high).
UNRANGED = ('seed', 'min_log_scale', 'positive_classes', 'image_shape',
            'logvar_range')


def numeric_leaves(config, prefix=''):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from numeric_leaves(value, f'{prefix}{key}.')
    elif key in UNRANGED:
      continue
    else:
      items = value if isinstance(value, tuple) else (value,)
      if items and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       for v in items):
        yield f'{prefix}{key}', value


def bad_value(key, value):
  rule = common.RANGES[key.split('.')[-1]]
  bad = {common.POSITIVE: 0, common.NON_NEGATIVE: -1,
         common.UNIT_INTERVAL: 1}[rule]
  if isinstance(value, tuple):
    return (type(value[0])(bad),) + value[1:]
  return type(value)(bad)


def cases():
  for spec in EXPERIMENTS:
    for key, value in numeric_leaves(loading.load_config(spec)):
      yield pytest.param(spec, key, value, id=f'{spec}-{key}')


@pytest.mark.parametrize('spec,key,value', list(cases()))
def test_each_numeric_setting_has_a_range_and_a_bad_value_fails_at_start(
    spec, key, value):
  assert key.split('.')[-1] in common.RANGES, (
      f'{key} has no entry in vaejax/configs/common.py RANGES')
  # The data directory does not exist: a check that ran after loading
  # data would fail with a DataError instead.
  config = loading.load_config(spec, **{
      key: bad_value(key, value), 'data.dir': '/nonexistent',
      'data.source': 'idx'})
  with pytest.raises((errors.ConfigError, data.DataError)) as error:
    stages.build_experiment(config)
  assert f'{key}=' in str(error.value)


def test_in_range_values_pass():
  for spec in EXPERIMENTS:
    common.check_ranges(loading.load_config(spec))


def test_a_negative_learning_rate_is_rejected_by_the_command(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'vaejax.main',
       '--config=experiments/vae.py:runlocal',
       '--config.optimizer.learning_rate=-1', f'--workdir={tmp_path / "w"}'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert 'Traceback' not in result.stderr
  assert ('vaejax: error: config.optimizer.learning_rate=-1.0 must be '
          'non-negative') in result.stderr
  assert not (tmp_path / 'w' / 'checkpoints').exists()
