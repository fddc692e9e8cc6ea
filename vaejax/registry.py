"""Named registries: components are chosen by name from the experiment config."""
from typing import Generic, Mapping, TypeVar

from vaejax import errors

T = TypeVar('T')


class UnknownNameError(errors.ConfigError, KeyError):
  """A config names a component that no registry holds."""

  def __str__(self):
    return self.args[0]


class Registry(Generic[T]):
  """A read-only mapping from names to builders with a helpful lookup error."""

  def __init__(self, kind: str, entries: Mapping[str, T], config_key: str):
    self.kind = kind
    self.config_key = config_key
    self._entries = dict(entries)

  def get(self, name: str) -> T:
    if name not in self._entries:
      raise UnknownNameError(
          f'Unknown {self.kind} {name!r}. Known {self.kind}s: '
          f'{", ".join(sorted(self._entries))}. Set {self.config_key} in the '
          f'experiment file or with --{self.config_key}=NAME.')
    return self._entries[name]

  def names(self):
    return sorted(self._entries)

  def __contains__(self, name):
    return name in self._entries
