"""Shared pieces of the command-line entry points (`vaejax.main`,
`vaejax.evaluate`, `vaejax.curves`): one-line errors, flag parsing and
quiet library logs."""
import logging
import sys

from absl import flags
from absl import logging as absl_logging


class QuietLibraryLogs(logging.Filter):
  """Keeps orbax's per-save INFO lines out of the console, and the
  tracebacks of its errors: vaejax reports a failed checkpoint write in one
  message (orbax's warnings and errors pass as one line each). Also JAX's
  line about backends it could not start (`Unable to initialize backend
  'tpu'`), which every CPU or GPU run prints and which means nothing there."""

  def filter(self, record):
    if (record.levelno < logging.WARNING
        and 'Unable to initialize backend' in record.getMessage()):
      return False
    if 'orbax' not in record.pathname:
      return True
    record.exc_info = record.exc_text = None
    return record.levelno >= logging.WARNING


def quiet_library_logs():
  absl_logging.get_absl_handler().addFilter(QuietLibraryLogs())


def fail(message, status=2):
  """Prints `vaejax: error: ...` and exits with `status` (no traceback)."""
  print(f'vaejax: error: {message}', file=sys.stderr)
  sys.exit(status)


def parse_flags(argv):
  """absl's flag parsing with its errors as one `vaejax: error:` line (the
  `flags_parser` of `app.run`)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(f'{e}\nPass --helpshort to see the flags.')


def refuse_arguments(argv):
  """Commands take flags only: anything left after parsing is a mistake."""
  if len(argv) > 1:
    fail(f'unexpected arguments {argv[1:]}; pass --helpshort to see the '
         f'flags.')
