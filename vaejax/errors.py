"""User-facing errors: what is wrong and what to do.

Raised before any work, except a checkpoint that cannot be written (a full
disk), which stops training. `vaejax.main` prints these (and data errors) as
one message without a traceback and exits with status 2.
"""


class UserError(Exception):
  """A problem with the user's config, data or workdir."""


class ConfigError(UserError, ValueError):
  """The experiment config asks for something that cannot work."""


class WorkdirError(UserError):
  """The workdir cannot be written, or its checkpoints cannot be used."""
