"""Entry point: `python -m vaejax.main --config experiments/vae.py --workdir W`.

Flags only; the work is `vaejax.train.train_and_evaluate`.
"""
import logging

from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from vaejax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Experiment file, e.g. experiments/vae.py:conv,runlocal.',
    lock_config=True)
flags.DEFINE_string('workdir', None,
                    'Directory for checkpoints, TensorBoard events and images. '
                    'Rerunning with the same workdir resumes.')
flags.mark_flags_as_required(['config', 'workdir'])


class _HideLibraryInfo(logging.Filter):
  """Keeps orbax's per-save INFO lines out of the console (warnings pass)."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or 'orbax' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  absl_logging.get_absl_handler().addFilter(_HideLibraryInfo())
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
