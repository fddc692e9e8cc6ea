"""The tools beside the train command, run as a user runs them:
`python -m vaejax.soak` tells identical resumed runs from differing ones,
and `python -m vaejax.benchmark` runs its cases (at a tiny size here)."""
import json
import math

from vaejax import benchmark
from conftest import REPO_ROOT
from conftest import run_module

# experiments/vae.py, except that runs whose workdir is the soak's second
# cycle learn 1% faster: their final state cannot be the uninterrupted
# run's, wherever the kill lands.
PERTURBED_EXPERIMENT = '''
import importlib.util
import sys

def get_config(arg=None):
  spec = importlib.util.spec_from_file_location(
      'vae_experiment', {vae_experiment!r})
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  if any('cycle_02' in argument for argument in sys.argv):
    config.optimizer.learning_rate *= 1.01
  return config
'''


def test_soak_reports_identical_and_differing_runs(tiny_data_dir, tmp_path):
  experiment_file = tmp_path / 'perturbed_vae.py'
  experiment_file.write_text(PERTURBED_EXPERIMENT.format(
      vae_experiment=str(REPO_ROOT / 'experiments' / 'vae.py')))
  result = run_module(
      'vaejax.soak', '--config', f'{experiment_file}:runlocal', '--cycles=2',
      '--num_train_steps=100', f'--data_dir={tiny_data_dir}',
      f'--workdir={tmp_path / "soak"}', timeout=1200)
  lines = result.stdout.splitlines()
  cycles = [line for line in lines if line.startswith('cycle')]
  assert len(cycles) == 2, result.stdout + result.stderr[-3000:]
  assert cycles[0].startswith('cycle  1/2') and (
      'final state bit-identical' in cycles[0]), cycles[0]
  assert cycles[1].startswith('cycle  2/2') and (
      'FINAL STATE DIFFERS' in cycles[1]), cycles[1]
  assert 'Summary: 1/2 cycles bit-identical' in result.stdout
  assert result.returncode == 1, result.stderr[-3000:]


# Every case built from an experiment file, the handwritten baseline and
# one family program: the other family programs run, count their FLOPs and
# learn in benchmark_test.py (test_program_case_trains_and_counts_its_useful_
# flops), and the command's reporting is the same code for every case.
CLI_CASES = [name for name, case in benchmark.CASES.items()
             if not case.program or name in (
                 benchmark.HANDWRITTEN, 'pixelcnn_gated_7x7_k128_b128')]


def test_benchmark_cases_run_at_a_tiny_size(tiny_data_dir):
  result = run_module(
      'vaejax.benchmark', '--windows=1', '--steps_per_window=2',
      f'--cases={",".join(CLI_CASES)}',
      f'--set=data.dir={tiny_data_dir}', '--set=data.source=idx',
      '--set=batch_size=32', timeout=1800)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [json.loads(line) for line in result.stdout.splitlines()
           if line.startswith('{')]
  assert [line['name'] for line in lines] == CLI_CASES
  for line in lines:
    # (The mixture case adds its PCA features.)
    assert line['data'].startswith(f'IDX files in {tiny_data_dir}'), line
    assert line['batch_size'] == 32 and line['devices'] == 1, line
    for key in ('examples_per_s', 'flops_per_example',
                'roofline_examples_per_s'):
      assert line[key] > 0, (line['name'], key)
    assert math.isfinite(line['final_loss']), line
    # The median of per-window fractions; with one window it is that
    # window's rate over its roofline (equal up to the printed rounding).
    assert abs(line['fraction_of_roofline'] - line['examples_per_s']
               / line['roofline_examples_per_s']) <= (
                   0.01 * line['fraction_of_roofline'] + 0.001), line
