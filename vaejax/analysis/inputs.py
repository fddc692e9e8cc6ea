"""Input checks of the fitting functions in `vaejax.analysis`.

The public fitting functions run them on concrete arrays before any work is
traced, so bad input fails with a message saying what to change.
"""
import jax
import jax.numpy as jnp

COVARIANCE_TYPES = ('diag', 'full')


def as_float_array(x) -> jax.Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  return x


def check_data(x: jax.Array, num_components: int) -> None:
  if x.ndim != 2:
    raise ValueError(
        f'x must be 2-D [num_examples, num_features], got shape {x.shape}; '
        'reshape it, e.g. x.reshape(len(x), -1).')
  if num_components < 1:
    raise ValueError(
        f'The number of components must be at least 1, got {num_components}.')
  if x.shape[0] < num_components:
    raise ValueError(
        f'x has {x.shape[0]} examples but {num_components} components were '
        'requested; use at most as many components as examples.')
  # Values are known only outside a trace; inside the train loop's jitted
  # step a NaN reaches the loss instead, and the loop stops on it.
  if (not isinstance(x, jax.core.Tracer)
      and not bool(jnp.all(jnp.isfinite(x)))):
    raise ValueError(
        'x contains NaN or inf; remove or impute those entries before '
        'fitting.')


def check_covariance_type(covariance_type: str) -> None:
  if covariance_type not in COVARIANCE_TYPES:
    raise ValueError(
        f'Unknown covariance_type {covariance_type!r}; '
        f'known types: {", ".join(COVARIANCE_TYPES)}.')


def check_binary_labels(y: jax.Array, num_examples: int) -> None:
  if y.shape != (num_examples,):
    raise ValueError(
        f'y must be 1-D with one label per example, shape ({num_examples},), '
        f'got shape {y.shape}.')
  if not bool(jnp.all((y == 0) | (y == 1))):
    raise ValueError('y must contain only the labels 0 and 1.')


def check_features(x: jax.Array, means: jax.Array) -> None:
  if x.ndim != 2 or x.shape[1] != means.shape[1]:
    raise ValueError(
        f'x must have shape [num_examples, {means.shape[1]}] to match the '
        f'model, got {x.shape}.')

