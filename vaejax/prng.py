"""Named PRNG streams and per-example keys.

One root key from `config.seed` is split into the named streams of
KEY_STREAMS. Per-example keys come from an example's position in the global
batch (or in the evaluated split), never from how a batch is divided over
devices, so 1, 2, 4 or 8 devices draw the same numbers.
"""
import jax

KEY_STREAMS = ('init', 'data', 'train', 'eval', 'sample')


def named_keys(seed):
  """The root key of `seed` split into the streams of KEY_STREAMS."""
  keys = jax.random.split(jax.random.key(seed), len(KEY_STREAMS))
  return dict(zip(KEY_STREAMS, keys))


def example_keys(key, positions):
  """[B] keys fold_in(key, position): one per example."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, positions)


def split_per_example(keys, num):
  """[B] keys -> tuple of `num` arrays of [B] keys (independent streams)."""
  split = jax.vmap(lambda k: jax.random.split(k, num))(keys)
  return tuple(split[:, i] for i in range(num))


def data_and_objective_keys(key, positions):
  """The (data transform, objective) keys of the examples at `positions`.

  Training uses fold_in(train_key, step) as `key`, evaluation the fixed
  `eval` stream, so held-out inputs are drawn the same way every time.
  """
  return split_per_example(example_keys(key, positions), 2)
