"""The README tells the truth about its commands."""
import pathlib
import re
import shlex

from absl import flags
from ml_collections import config_flags
import numpy as np
from PIL import Image
import pytest

from conftest import REPO_ROOT
from vaejax import stages

FASHION_MNIST_DIR = pathlib.Path('/usr/share/datasets/fashion-mnist')

README = (REPO_ROOT / 'README.md').read_text()


def shell_lines():
  blocks = re.findall(r'```sh\n(.*?)```', README, flags=re.S)
  return [line for block in blocks for line in block.splitlines() if line]


def test_ci_runs_exactly_the_readme_test_command():
  ci_command = (REPO_ROOT / '.ci' / 'run').read_text().strip().splitlines()[-1]
  test_commands = [l for l in shell_lines() if 'pytest' in l]
  assert test_commands == [ci_command]


def test_run_command_trains_the_default_experiment():
  run = [l for l in shell_lines() if l.startswith('pip install -e . &&')]
  assert len(run) == 1
  assert 'python -m vaejax.main --config experiments/vae.py --workdir' in run[0]


# The bad-input table's example of an experiment file that does not exist.
MISSING_ON_PURPOSE = 'experiments/nope.py'


def test_every_experiment_file_named_in_the_readme_exists():
  named = set(re.findall(r'experiments/\w+\.py', README))
  assert MISSING_ON_PURPOSE in named
  assert not (REPO_ROOT / MISSING_ON_PURPOSE).exists()
  for path in named - {MISSING_ON_PURPOSE}:
    assert (REPO_ROOT / path).exists(), path


def test_readme_tools_come_with_the_base_install():
  """The README's commands work after its first command alone
  (`pip install -e .`), without the dev extra."""
  tomllib = pytest.importorskip('tomllib')  # Python >= 3.11
  project = tomllib.loads((REPO_ROOT / 'pyproject.toml').read_text())['project']
  base = {re.split(r'[\s<>=\[;]', requirement)[0].lower()
          for requirement in project['dependencies']}
  commands = '\n'.join(shell_lines()).replace('\\\n', ' ').splitlines()
  tools = {line.split()[0] for line in commands
           if not line.startswith(('#', 'pip ', 'python '))}
  assert tools <= base, f'README runs {tools - base}, not installed by pip install -e .'


def own_data_section():
  return README.split('## Your own data\n')[1].split('\n## ')[0]


def parse_main_command(line):
  """The config a `python -m vaejax.main ...` line gives vaejax.main, with
  experiment files found in the checkout."""
  argv = shlex.split(line.replace('experiments/', f'{REPO_ROOT}/experiments/'))
  assert argv[:3] == ['python', '-m', 'vaejax.main']
  argv = ['vaejax.main', *argv[3:]]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=fv,
                                  lock_config=True, sys_argv=argv)
  flags.DEFINE_string('workdir', None, '', flag_values=fv)
  fv(argv)
  return fv.config


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(),
                    reason=f'{FASHION_MNIST_DIR} absent (the README example '
                           'reads it)')
def test_own_data_examples_work(tmp_path, monkeypatch):
  """The section's Python block writes the files its commands train on; each
  command's config loads its data and builds its model (the training itself:
  tests/own_data_test.py)."""
  from own_data_test import prepare_tfds, random_images
  monkeypatch.chdir(tmp_path)
  section = own_data_section()
  (python_block,) = re.findall(r'```python\n(.*?)```', section, flags=re.S)
  exec(python_block, {})  # pylint: disable=exec-used
  tfds_dir = tmp_path / 'tfds'
  monkeypatch.setenv('TFDS_DATA_DIR', str(tfds_dir))
  prepare_tfds(tfds_dir, 'cifar10', {
      'train': (random_images(0, (32, 32, 3), 160), np.arange(160) % 10),
      'test': (random_images(1, (32, 32, 3), 20), np.arange(20) % 10)},
      class_names=[f'class_{k}' for k in range(10)])
  commands = [line for line in re.findall(r'```sh\n(.*?)```', section,
                                          flags=re.S)[0].splitlines()
              if line.startswith('python -m vaejax.main')]
  assert len(commands) == 3
  shapes = {}
  for command in commands:
    config = parse_main_command(command)
    exp = stages.build_experiment(config)
    shapes[config.data.name] = exp.image_shape
    assert exp.dataset.num_classes == 10
  assert shapes == {'npz': (28, 28, 1), 'image_folder': (32, 32, 1),
                    'cifar10': (32, 32, 3)}


def test_readme_pictures_are_vaejax_figures():
  """Every picture the README shows exists and was written by
  `images.save_picture` (it records the grid's box and scale), i.e. it is
  a figure of a run, not a drawing."""
  from vaejax import images
  named = re.findall(r'!\[[^\]]*\]\(([^)]+\.png)\)', README)
  assert len(named) >= 2
  for path in named:
    grid = images.read_grid(REPO_ROOT / path)
    assert 0.0 <= grid.min() < grid.max() <= 1.0
    if Image.open(REPO_ROOT / path).text.get('kind') == 'plot':
      # A plot of a run's numbers (a learning curve): colour lines.
      assert grid.ndim == 3 and np.ptp(grid, axis=-1).max() > 0.3, path
    else:
      # Grey image tiles, at least 8 of them across and down.
      assert grid.ndim == 2 and min(grid.shape) >= 8 * 28, (path,
                                                            grid.shape)
