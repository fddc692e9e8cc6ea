"""Data parallelism: the same numbers on 1, 2, 4 or 8 devices and on two
processes, and clear errors for batches the devices cannot split."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from vaejax import checkpoint
from vaejax import experiment
from vaejax import stages
from vaejax.configs import loading
from conftest import REPO_ROOT
from multidevice import device_env
from multidevice import free_port
from multidevice import run_python

EQUIVALENCE_SCRIPT = '''
import json, sys
import jax, numpy as np
sys.path.insert(0, 'tests')
from conftest import tiny_config
from vaejax import train
results = {{}}
for num_devices in {device_counts}:
  config = tiny_config({data_dir!r}, arg={arg!r}, num_devices=num_devices,
                       num_train_steps=6, steps_per_dispatch=3, log_every=3,
                       checkpoint_every=6, **{{'eval.max_examples': 64,
                       'optimizer.name': 'sgd', 'optimizer.learning_rate': 1e-4,
                       # Only the parameters and these two are compared.
                       'eval.extras': ('iwae',), 'eval.figures': ()}})
  out = train.train_and_evaluate(config, {workdir!r} + f'/{{num_devices}}')
  params = [np.asarray(x).tolist() for x in jax.tree.leaves(out['state']['params'])]
  results[num_devices] = {{'params': params, 'metrics': out['metrics']}}
print(json.dumps(results))
'''


@pytest.mark.parametrize('arg, device_counts', [
    ('runlocal', (1, 2, 8)),
    ('iwae,runlocal', (1, 8)),
    ('conv,runlocal', (1, 4)),
])
def test_same_results_on_any_device_count(tiny_data_dir, tmp_path, arg,
                                          device_counts):
  """Summation order differs with the device count, so results agree to
  float tolerance. SGD keeps it at that level; Adam divides by the root of
  the second moment and turns rounding in near-zero gradients into steps of
  up to ~lr, which would hide real differences behind a loose bound."""
  results = run_python(EQUIVALENCE_SCRIPT.format(
      device_counts=device_counts, data_dir=tiny_data_dir, arg=arg,
      workdir=str(tmp_path)), num_devices=max(device_counts))
  reference = results[str(device_counts[0])]
  for count in device_counts[1:]:
    other = results[str(count)]
    for a, b in zip(reference['params'], other['params']):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                                 atol=1e-6, err_msg=f'{arg}: {count} devices')
    for name in ('nll_elbo', 'nll_iwae'):
      np.testing.assert_allclose(reference['metrics'][name],
                                 other['metrics'][name], rtol=1e-5)


def test_batch_not_divisible_by_devices_is_a_start_up_error(tiny_data_dir,
                                                            tmp_path):
  result = run_python(f'''
      import json, sys
      sys.path.insert(0, 'tests')
      from conftest import tiny_config
      from vaejax import train
      config = tiny_config({tiny_data_dir!r}, batch_size=30)
      try:
        train.train_and_evaluate(config, {str(tmp_path / 'w')!r})
        message = None
      except Exception as e:
        message = str(e)
      print(json.dumps(message))
      ''', num_devices=8)
  assert 'config.batch_size=30 is not divisible by the number of devices (8)' \
      in result
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')


# `python -m vaejax.main` in this process, then one JSON line: the run this
# process joined, and every file it opened for writing (or renamed into
# place) under the workdir.
JOINED_MAIN = '''
import json, os, runpy, sys
workdir = os.path.abspath(next(arg.split('=', 1)[1] for arg in sys.argv
                               if arg.startswith('--workdir=')))
written = set()

def record_writes(event, args):
  if event == 'open' and isinstance(args[0], (str, bytes, os.PathLike)):
    path, mode, flags = args
    writes = (any(c in mode for c in 'wax+') if mode
              else flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
  elif event in ('os.rename', 'os.replace'):
    path, writes = args[1], True
  else:
    return
  path = os.path.abspath(os.fsdecode(path))
  if writes and path.startswith(workdir + os.sep):
    written.add(os.path.relpath(path, workdir))

sys.addaudithook(record_writes)
sys.argv[0] = 'vaejax.main'
try:
  runpy.run_module('vaejax.main', run_name='__main__', alter_sys=True)
except SystemExit as e:
  status = e.code
import jax
print(json.dumps({'status': status, 'process_index': jax.process_index(),
                  'process_count': jax.process_count(),
                  'device_count': jax.device_count(),
                  'written': sorted(written)}))
'''


def test_two_processes_match_one_process_with_four_devices(tiny_data_dir,
                                                           tmp_path):
  """2 processes x 2 devices join one run that equals 1 process x 4
  devices after N steps: parameters and evaluation metrics (gathered from
  both processes); only process 0 writes anything but checkpoints."""
  common = ['--config', 'experiments/vae.py:runlocal',
            f'--config.data.dir={tiny_data_dir}', '--config.batch_size=32',
            '--config.eval.batch_size=32', '--config.eval.iwae_batch_size=32',
            '--config.eval.max_examples=64', '--config.num_train_steps=8']
  single = subprocess.run(
      [sys.executable, '-m', 'vaejax.main', *common,
       f'--workdir={tmp_path / "single"}'],
      cwd=REPO_ROOT, env=device_env(4), capture_output=True, text=True,
      timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  port = free_port()
  processes = [subprocess.Popen(
      [sys.executable, '-c', JOINED_MAIN, *common,
       f'--workdir={tmp_path / "multi"}',
       f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
       f'--process_id={i}'],
      cwd=REPO_ROOT, env=device_env(2), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  reports = []
  for p in processes:
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr[-3000:]
    reports.append(json.loads(stdout.strip().splitlines()[-1]))
  # One run of 2 processes over 4 devices, not two runs of 2 devices each.
  for index, report in enumerate(reports):
    assert report['status'] in (0, None), report
    assert (report['process_index'], report['process_count'],
            report['device_count']) == (index, 2, 4)

  config = loading.load_config(
      'experiments/vae.py:runlocal', **{'data.dir': tiny_data_dir,
                                        'batch_size': 32})
  exp = stages.build_experiment(config)
  template = experiment.init_state(exp)
  states = {}
  for name in ('single', 'multi'):
    manager = checkpoint.create_manager(str(tmp_path / name))
    assert manager.latest_step() == 8
    states[name] = checkpoint.restore_latest(manager, template)
    manager.close()
  # Gloo and the in-process all-reduce add the devices' gradients in
  # different orders. Adam divides by the root of the squared-gradient
  # average, so for a weight whose gradient is near zero (a hidden unit that
  # rarely fires) that last-bit difference becomes a step difference of up
  # to the learning rate (1e-3) per step (seen: 5 of 313,600 weights, all
  # from border pixels, off by up to 4e-5). So: every weight within a tenth
  # of the learning rate, and all but 0.1% of them within 1e-6.
  for a, b in zip(jax.tree.leaves(states['single']['params']),
                  jax.tree.leaves(states['multi']['params'])):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
    close = np.isclose(a, b, rtol=1e-5, atol=1e-6)
    assert close.mean() > 0.999, (close.size - close.sum(), close.size)

  # The final evaluation of the joined run: each process evaluates its
  # devices' share of the 64 examples, and the means are of all of them.
  metrics = {}
  for name in ('single', 'multi'):
    with open(tmp_path / name / 'eval' / 'metrics.json') as f:
      metrics[name] = json.load(f)
    del metrics[name]['train_seconds_this_run']
  assert metrics['multi'].keys() == metrics['single'].keys()
  assert metrics['multi']['eval_examples'] == 64
  for key, value in metrics['single'].items():
    np.testing.assert_allclose(metrics['multi'][key], value, rtol=1e-5,
                               err_msg=key)

  # Only process 0 writes the config, metrics, pictures and TensorBoard
  # events; process 1 writes at most its share of the checkpoints.
  written_by_0 = reports[0]['written']
  for expected in ('config.json', os.path.join('eval', 'metrics.json')):
    assert expected in written_by_0, written_by_0
  for prefix in ('images', 'tensorboard'):
    assert any(path.startswith(prefix + os.sep) for path in written_by_0)
  written_by_1 = reports[1]['written']
  assert all(path.startswith('checkpoints' + os.sep)
             for path in written_by_1), written_by_1
