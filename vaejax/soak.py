"""Soak test of exact resume after kills: `python -m vaejax.soak`.

  python -m vaejax.soak [--cycles 10] [--seed 0] [--workdir W]
      [--config experiments/vae.py:runlocal] [--num_train_steps 400]
      [--data_dir DIR]

Trains a small config once without interruption, then, `--cycles` times:
starts the same `python -m vaejax.main` command in a fresh workdir, kills it
with SIGKILL at a random moment after its first checkpoint (uniform over
the time the uninterrupted run took from its first checkpoint to its last,
so kills land between chunks or during checkpoint writes), reruns the command to the end and compares every array of the
final checkpoint with the uninterrupted run's. (A kill before the first
checkpoint leaves nothing to resume; tests/reliability_test.py covers the
kill after a chosen checkpoint.) Prints one line per cycle and a summary;
exits with status 1 if any cycle differs. It takes minutes, so it is not
part of the unit tests (tests/reliability_test.py kills runs at chosen
moments).
"""
import os
import re
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

from vaejax import data as data_lib
from vaejax import stages
from vaejax import workdir as workdir_lib
from vaejax.configs import loading

flags.DEFINE_string('config', 'experiments/vae.py:runlocal',
                    'Experiment file and variants of the run.')
flags.DEFINE_integer('num_train_steps', 400, 'Steps of every run.')
flags.DEFINE_string(
    'data_dir', None, 'Directory with the IDX files to train on (default: '
    'the usual search, e.g. the Fashion-MNIST of dataset-fashion-mnist).')
flags.DEFINE_integer('cycles', 10, 'Kill-and-resume cycles.')
flags.DEFINE_integer('seed', 0, 'Seeds the kill times.')
flags.DEFINE_string('workdir', None, 'Where the runs go (one subdirectory '
                    'each); default: a new temporary directory.')
FLAGS = flags.FLAGS

# Checkpoints often enough for kills to land between and during writes; the
# final evaluation without extras and figures, which have nothing to resume.
RUN_OVERRIDES = {'checkpoint_every': 50, 'log_every': 50,
                 'steps_per_dispatch': 10, 'eval.extras': (),
                 'eval.figures': (), 'eval.max_examples': 500}
FIRST_CHECKPOINT = RUN_OVERRIDES['checkpoint_every']


def run_overrides():
  overrides = dict(RUN_OVERRIDES, num_train_steps=FLAGS.num_train_steps)
  if FLAGS.data_dir:
    overrides['data.dir'] = FLAGS.data_dir
  return overrides


def main_command(workdir, overrides):
  config_flags = [f'--config.{key}={value!r}' if isinstance(value, tuple)
                  else f'--config.{key}={value}'
                  for key, value in overrides.items()]
  return [sys.executable, '-m', 'vaejax.main', '--config', FLAGS.config,
          '--workdir', workdir, *config_flags]


def child_env():
  return dict(os.environ, JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', 'cpu'))


def start(command, log_path):
  with open(log_path, 'w') as log:
    return subprocess.Popen(command, stdout=log, stderr=log, env=child_env())


def read(path):
  with open(path) as f:
    return f.read()


def wait_for_checkpoint(process, workdir, step, log_path):
  """Returns when checkpoint `step` is complete (orbax renames it into
  place), or the process ended."""
  path = os.path.join(workdir_lib.checkpoint_dir(workdir), str(step))
  while not os.path.isdir(path) and process.poll() is None:
    time.sleep(0.02)
  if not os.path.isdir(path):
    raise RuntimeError(f'the run stopped before checkpoint {step}; see '
                       f'{log_path}')


def checkpoint_steps(workdir):
  names = os.listdir(workdir_lib.checkpoint_dir(workdir))
  complete = sorted(int(name) for name in names if name.isdigit())
  being_written = sorted(int(name.split('.')[0]) for name in names
                         if '.orbax-checkpoint-tmp' in name)
  return complete, being_written


def uninterrupted_run(workdir):
  """Runs to the end; returns the seconds from its first checkpoint to its
  last, and its log."""
  log_path = os.path.join(workdir, 'run.log')
  process = start(main_command(workdir, run_overrides()), log_path)
  wait_for_checkpoint(process, workdir, FIRST_CHECKPOINT, log_path)
  first = time.monotonic()
  wait_for_checkpoint(process, workdir, FLAGS.num_train_steps, log_path)
  seconds = time.monotonic() - first
  if process.wait() != 0:
    raise RuntimeError(f'the uninterrupted run failed; see {log_path}')
  return seconds, log_path


class FinalStates:
  """The newest checkpoint of a workdir of the soak's config, as leaves."""

  def __init__(self):
    self.config = loading.load_config(FLAGS.config, **run_overrides())
    self.dataset = data_lib.load_dataset(self.config.data)

  def __call__(self, workdir):
    trained = stages.restore(workdir, self.config, self.dataset)
    return jax.tree.leaves(jax.device_get(trained.state))


def describe_steps(complete, being_written):
  if not complete:
    text = 'no checkpoint'
  elif len(complete) == 1:
    text = f'step {complete[0]}'
  else:
    text = f'steps {", ".join(map(str, complete))}'
  if being_written:
    text += f' (+ step {being_written[-1]} half-written)'
  return text


def soak_cycle(index, kill_after, root, reference, final_states):
  """Kill `kill_after` s after the first checkpoint, rerun, compare.

  Returns (a report line, whether the final states are identical, where
  the kill landed).
  """
  workdir = os.path.join(root, f'cycle_{index:02d}')
  os.makedirs(workdir)
  command = main_command(workdir, run_overrides())
  killed_log = os.path.join(workdir, 'killed.log')
  process = start(command, killed_log)
  wait_for_checkpoint(process, workdir, FIRST_CHECKPOINT, killed_log)
  time.sleep(kill_after)
  if process.poll() is None:
    process.kill()
    process.wait()
    complete, being_written = checkpoint_steps(workdir)
    killed = (f'SIGKILL {kill_after:5.2f} s after the first checkpoint; on '
              f'disk: {describe_steps(complete, being_written)}')
    if being_written:
      landed = 'during a checkpoint write'
    elif complete[-1] == FLAGS.num_train_steps:
      landed = 'after the last checkpoint'
    else:
      landed = 'between checkpoints'
  else:
    killed = f'finished before the kill at {kill_after:.2f} s'
    landed = 'after the end'
  rerun = subprocess.run(command, capture_output=True, text=True,
                         env=child_env())
  if rerun.returncode != 0:
    return (f'cycle {index}: {killed}; the rerun failed:\n{rerun.stderr}',
            False, landed)
  resumed = re.search(r'Resumed from \S+ at step (\d+)', rerun.stderr)
  resumed_at = int(resumed.group(1)) if resumed else 0
  arrays = final_states(workdir)
  equal = sum(np.array_equal(a, b) for a, b in zip(arrays, reference))
  identical = equal == len(reference) == len(arrays)
  verdict = ('final state bit-identical' if identical
             else 'FINAL STATE DIFFERS')
  return (f'cycle {index:2d}/{FLAGS.cycles}: {killed}; rerun resumed at step '
          f'{resumed_at} -> {FLAGS.num_train_steps}: {verdict} '
          f'({equal}/{len(reference)} arrays equal)', identical, landed)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  root = FLAGS.workdir or tempfile.mkdtemp(prefix='vaejax_soak_')
  os.makedirs(root, exist_ok=True)
  started = time.monotonic()
  reference_dir = os.path.join(root, 'uninterrupted')
  os.makedirs(reference_dir)
  training_seconds, log_path = uninterrupted_run(reference_dir)
  loaded = re.search(r'Loaded .*', read(log_path))
  print(f'Soak: {FLAGS.config}, {FLAGS.num_train_steps} steps, checkpoints '
        f'every {RUN_OVERRIDES["checkpoint_every"]}; '
        f'{loaded.group(0) if loaded else ""}')
  print(f'Uninterrupted run in {reference_dir}: {training_seconds:.1f} s from '
        f'its first checkpoint to its last. Kill times: uniform in that '
        f'interval after the first checkpoint, seed {FLAGS.seed}.', flush=True)
  final_states = FinalStates()
  reference = final_states(reference_dir)
  rng = np.random.default_rng(FLAGS.seed)
  results = []
  for index in range(1, FLAGS.cycles + 1):
    line, identical, landed = soak_cycle(
        index, rng.uniform(0, training_seconds), root, reference,
        final_states)
    print(line, flush=True)
    results.append((identical, landed))
  identical_count = sum(identical for identical, _ in results)
  landings = {}
  for _, landed in results:
    landings[landed] = landings.get(landed, 0) + 1
  print(f'Summary: {identical_count}/{FLAGS.cycles} cycles bit-identical to '
        f'the uninterrupted run. Kills landed '
        + ', '.join(f'{where} ({count}x)' for where, count in landings.items())
        + f'. Total {time.monotonic() - started:.0f} s; runs in {root}.')
  sys.exit(0 if identical_count == FLAGS.cycles else 1)


if __name__ == '__main__':
  app.run(main)
