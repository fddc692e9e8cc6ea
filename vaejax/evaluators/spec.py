"""What an evaluation or figure is: a function and what it needs.

An `Evaluation` names the family abilities it needs (`requires`, asked of
`vaejax.models.family.Family`), whether it needs class labels, and the
config keys it reads (`settings`): the function receives exactly those, so
each evaluation reads only its own block of the config.
"""
import dataclasses
from typing import Callable

import ml_collections


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """fn(evaluator, variables, images, settings) -> {name: float} for a
  metric, or fn(evaluator, variables, settings) -> {name: grid} for a
  figure.

  `settings` are dotted config keys; keys without a section are in
  `config.eval` ('iwae_samples' is config.eval.iwae_samples).
  """
  fn: Callable
  requires: tuple = ()
  needs_labels: bool = False
  settings: tuple = ()
  # fn(evaluator, settings) -> None, or why the evaluation cannot run here
  # (a file it reads is missing): checked when the evaluator is built.
  unavailable: Callable | None = None


def setting_path(key):
  return key if '.' in key else f'eval.{key}'


def read_settings(config, keys):
  """The values of `keys` in `config` as a locked ConfigDict, named by the
  key's last part ('objective.corruption' -> settings.corruption)."""
  values = {}
  for key in keys:
    node = config
    for part in setting_path(key).split('.'):
      node = node[part]
    values[key.split('.')[-1]] = node
  settings = ml_collections.ConfigDict(values)
  settings.lock()
  return settings
