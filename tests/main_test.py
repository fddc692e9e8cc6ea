"""The command line: a runlocal run that resumes, and bad input fails fast
with a message (exit status 2, no traceback) before any training work."""
import os
import subprocess
import sys
import time

from conftest import REPO_ROOT


def run_main(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run(
      [sys.executable, '-m', 'vaejax.main', *args], cwd=REPO_ROOT, env=env,
      capture_output=True, text=True, timeout=timeout)


def assert_clean_failure(result, *fragments):
  assert result.returncode == 2, result.stderr
  assert 'Traceback' not in result.stderr, result.stderr
  for fragment in fragments:
    assert fragment in result.stderr, result.stderr


def test_cli_runs_and_rerun_resumes(tiny_data_dir, tmp_path):
  args = ['--config', 'experiments/vae.py:runlocal', '--workdir', str(tmp_path),
          f'--config.data.dir={tiny_data_dir}', '--config.batch_size=32',
          '--config.eval.batch_size=32', '--config.eval.iwae_batch_size=32',
          '--config.num_train_steps=10']
  first = run_main(*args)
  assert first.returncode == 0, first.stderr
  assert 'examples/s' in first.stderr and 'ETA' in first.stderr
  assert os.path.isdir(tmp_path / 'checkpoints' / '10')
  second = run_main(*args[:-1], '--config.num_train_steps=20')
  assert second.returncode == 0, second.stderr
  assert 'Resumed from' in second.stderr and 'at step 10' in second.stderr
  assert os.path.isdir(tmp_path / 'checkpoints' / '20')


def test_mistyped_override_names_the_key(tmp_path):
  result = run_main('--config', 'experiments/vae.py:runlocal', '--workdir',
                    str(tmp_path), '--config.model.latnt_dim=3')
  assert_clean_failure(result, '--config.model.latnt_dim=3:',
                       'no key model.latnt_dim',
                       'Did you mean model.latent_dim?')
  assert "''" not in result.stderr, result.stderr  # no nested quotes
  assert not os.listdir(tmp_path)


def test_wrong_value_type(tmp_path):
  result = run_main('--config', 'experiments/vae.py:runlocal', '--workdir',
                    str(tmp_path), '--config.batch_size=many')
  assert_clean_failure(result, 'batch_size', 'many')


def test_unknown_variant(tmp_path):
  result = run_main('--config', 'experiments/vae.py:runlocal,convv',
                    '--workdir', str(tmp_path))
  assert_clean_failure(result, 'Unknown variant(s) convv', 'runlocal')


def test_missing_data_fails_fast_with_what_was_tried(tmp_path):
  start = time.monotonic()
  result = run_main(
      '--config', 'experiments/vae.py:mnist,runlocal', '--workdir',
      str(tmp_path / 'w'), f'--config.data.dir={tmp_path / "nothing"}',
      timeout=300)
  # Offline TFDS retries for about 200 s before failing; a start-up error
  # takes seconds (the bound leaves room for a loaded machine).
  assert time.monotonic() - start < 100
  # A directory the user names is the only place read: no fallback.
  assert_clean_failure(result, str(tmp_path / 'nothing'),
                       'is not a directory', 'leave data.dir unset')
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')

