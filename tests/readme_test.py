"""The README tells the truth about its commands."""
import re

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
