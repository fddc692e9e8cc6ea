"""The README tells the truth about its commands."""
import re

import pytest

from conftest import REPO_ROOT

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


def test_every_experiment_file_named_in_the_readme_exists():
  for path in set(re.findall(r'experiments/\w+\.py', README)):
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
