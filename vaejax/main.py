"""Entry point: `python -m vaejax.main --config experiments/vae.py --workdir W`.

Flags only; the work is `vaejax.train.train_and_evaluate`. Exit status:
  0    trained and evaluated;
  1    training stopped on a NaN or inf (the last good checkpoint is kept);
  2    bad input: config, data, workdir or its checkpoints (nothing trained);
  128+N  stopped by signal N (SIGTERM: 143, Ctrl-C: 130) after saving a
       checkpoint; rerunning the same command resumes.
Each failure prints one `vaejax: ...` line saying what to do, no traceback.
"""
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from vaejax import cli
from vaejax import data
from vaejax import errors
from vaejax import sharding
from vaejax import train

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


def parse_flags(argv):
  """absl flag parsing, with config_flags' override errors made readable."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    message = str(e)
    if 'Traceback' in message:  # an error raised inside the experiment file
      message = message.split('Traceback')[0] + message.strip().splitlines()[-1]
    cli.fail(f'{message}\nPass --helpshort to see the flags.')
  except (AttributeError, KeyError) as e:
    # config_flags raises these for a --config.<key> the config lacks.
    detail = str(e.args[0] if e.args else e).replace("\\'", "'").replace('\\n', ' ')
    overrides = [a for a in argv[1:] if a.startswith('--config.')]
    cli.fail(f'a --config override names a key the experiment config does '
             f'not have: {detail} (overrides given: {" ".join(overrides)}). '
             f'The keys are listed in the experiment file.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.quiet_library_logs()
  if FLAGS.coordinator_address or FLAGS.distributed:
    sharding.initialize_distributed(FLAGS.coordinator_address,
                                    FLAGS.num_processes, FLAGS.process_id)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (errors.UserError, data.DataError) as e:
    cli.fail(str(e))
  except train.NonFiniteError as e:
    cli.fail(str(e), status=1)
  except train.Interrupted as e:
    print(f'vaejax: stopped: {e}', file=sys.stderr)
    sys.exit(128 + e.signal_number)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
