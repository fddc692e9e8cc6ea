"""User-facing errors: what is wrong and what to do, raised before any work.

`vaejax.main` prints these (and data errors) as one message without a
traceback and exits with status 2.
"""


class UserError(Exception):
  """A problem with the user's config, data or workdir."""


class ConfigError(UserError, ValueError):
  """The experiment config asks for something that cannot work."""
