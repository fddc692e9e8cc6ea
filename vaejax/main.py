"""Entry point: `python -m vaejax.main --config experiments/vae.py --workdir W`.

Flags only; the work is `vaejax.train.train_and_evaluate`. Exit status:
  0    trained and evaluated;
  1    training stopped on a NaN or inf (the last good checkpoint is kept);
  2    bad input: config, data, workdir or its checkpoints (nothing trained);
  128+N  stopped by signal N (SIGTERM: 143, Ctrl-C: 130) after saving a
       checkpoint; rerunning the same command resumes.
Each failure prints one `vaejax: ...` line saying what to do, no traceback.
"""
import re
import sys

import jax
from absl import app
from absl import flags
from ml_collections import config_flags

from vaejax import cli
from vaejax import data
from vaejax import errors
from vaejax import faults
from vaejax import metric_writers
from vaejax import sharding
from vaejax import train
from vaejax.configs import loading

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Experiment file, e.g. experiments/vae.py:conv,runlocal.',
    lock_config=True)
flags.DEFINE_string('workdir', None,
                    'Directory for checkpoints, TensorBoard events and images. '
                    'Rerunning with the same workdir resumes.')
flags.DEFINE_string(
    'coordinator_address', None,
    'Multi-process runs: host:port of process 0. Start the same command on '
    'every host with --num_processes and its own --process_id.')
flags.DEFINE_integer('num_processes', None, 'Multi-process runs: how many.')
flags.DEFINE_integer('process_id', None, 'Multi-process runs: this one (0..N-1).')
flags.DEFINE_bool(
    'distributed', False,
    'Call jax.distributed.initialize() with cluster auto-detection (SLURM, '
    'Cloud TPU, ...) instead of the three flags above.')
flags.mark_flags_as_required(['config', 'workdir'])


def config_spec(argv):
  """The value of --config in `argv`, or None."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def last_line_without_exception_type(message):
  """'...\nvaejax.errors.ConfigError: what' -> 'what'."""
  last = message.strip().splitlines()[-1]
  return re.sub(r'^[\w.]*(Error|Exception): ', '', last)


def parse_flags(argv):
  """absl flag parsing, with config_flags' errors made readable: one line
  saying what is wrong and what to do, no traceback."""
  spec = config_spec(argv)
  if spec:
    try:
      loading.resolve_path(spec.partition(':')[0])
    except errors.ConfigError as e:
      cli.fail(f'{e} The experiment files are in experiments/.')
  try:
    return FLAGS(argv)
  except flags.Error as e:
    message = str(e)
    if 'Traceback' in message:  # an error raised inside the experiment file
      message = (f'--config={spec}: '
                 f'{last_line_without_exception_type(message)}')
    cli.fail(f'{message}\nPass --helpshort to see the flags.')
  except (AttributeError, KeyError):
    # config_flags raises these for a --config.<key> the config lacks.
    config = loading.load_config(spec)
    for arg in argv[1:]:
      if arg.startswith('--config.'):
        key = arg[len('--config.'):].split('=', 1)[0]
        problem = loading.missing_key(config, key)
        if problem:
          cli.fail(f'{arg}: in {spec} {problem} The keys are listed in the '
                   f'experiment file.')
    raise


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.quiet_library_logs()
  if FLAGS.coordinator_address or FLAGS.distributed:
    sharding.initialize_distributed(FLAGS.coordinator_address,
                                    FLAGS.num_processes, FLAGS.process_id)
  try:
    result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (errors.UserError, data.DataError) as e:
    cli.fail(str(e))
  except (faults.NonFiniteError, faults.StalledError) as e:
    cli.fail(str(e), status=1)
  except faults.Interrupted as e:
    print(f'vaejax: stopped: {e}', file=sys.stderr)
    sys.exit(128 + e.signal_number)
  if jax.process_index() == 0:
    print(summary(result))


def summary(result):
  """What a finished run prints: its headline metrics and where its outputs
  are (per-dimension KLs stay in the metrics file)."""
  metrics = {name: value for name, value in result['metrics'].items()
             if not name.startswith('kl_dim_')}
  state = ('was already complete; its saved final evaluation'
           if result['complete'] else 'finished; final evaluation')
  lines = [f'Run {state} (step {int(result["state"]["step"])}):',
           metric_writers.format_metrics(metrics),
           f'Metrics:     {result["metrics_path"]}']
  if result['figure_paths']:
    lines.append('Pictures:    ' + ', '.join(
        sorted(result['figure_paths'].values())))
  lines.append(f'TensorBoard: tensorboard --logdir {result["tensorboard_dir"]}')
  return '\n'.join(lines)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
