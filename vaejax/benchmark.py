r"""Training throughput against the machine's matmul roofline.

  python -m vaejax.benchmark [--cases=vae_mlp_784_400_20_b128,...] [--windows=7]
      [--profile] [--set=model.conv_impl=lax ...]

Prints one JSON line per case:
  name                      the case
  examples_per_s            median over timed windows after compilation
  compile_s                 time to compile the train chunk
  flops_per_example         XLA's count for one train step / batch size
  matmul_gflops             float32 matmul rate measured in this run
  roofline_examples_per_s   matmul_gflops / flops_per_example
  fraction_of_roofline      examples_per_s / roofline_examples_per_s
plus the device count, backend, host CPU and data used. Each case trains through the
same `train.make_train_chunk` as `python -m vaejax.main` (training set on
device, several steps per dispatch), on Fashion-MNIST when it is installed
and on random images of the same shape otherwise. The case
`handwritten_vae_mlp_784_400_20_b128` is the first case's VAE written out in
plain JAX (`handwritten_vae`), on the same data: the baseline that shows what
vaejax's loop costs over a minimal hand-jitted one.

With --profile, one more window runs under `jax.profiler` and the line gains
`profile`: milliseconds per step spent in each kind of XLA op (matmul =
dots and convolutions; random = PRNG hashing; collectives; then the rest by
the train step's named scope: inputs, loss_and_gradient, metrics,
optimizer), the slowest ops, and `matmul_bound_examples_per_s`, the rate if
everything but the matmuls were free. Times under the profiler run a little
slower than unprofiled. --profile_dir keeps the trace (open it in Perfetto
or TensorBoard).
"""
import ast
import functools
import json
import os
import platform
import statistics
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from vaejax import benchmark_profile as profiling
from vaejax import cli
from vaejax import data as data_lib
from vaejax import errors
from vaejax import experiment
from vaejax.configs import loading
from vaejax import sharding
from vaejax import stages
from vaejax import train
from vaejax.data import pipeline

HANDWRITTEN = 'handwritten_vae_mlp_784_400_20_b128'

# name -> (experiment spec, config overrides). The first is the
# pytorch/examples VAE: 784-400-20, Bernoulli, Adam 1e-3, batch 128, dynamic
# binarisation. The GMM case is full-batch EM (one step = one EM iteration
# over all 60k training examples) on the 50 principal components.
CASES = {
    'vae_mlp_784_400_20_b128': ('experiments/vae.py', {}),
    # The same VAE written out in plain JAX (`handwritten_vae`): what the
    # registries, per-example keys and metrics of vaejax's loop cost.
    HANDWRITTEN: ('experiments/vae.py', {}),
    'vae_conv_b128': ('experiments/vae.py:conv', {}),
    'iwae_k5_mlp_b128': ('experiments/vae.py:iwae', {}),
    'ae_mlp_784_512_32_b128': ('experiments/ae.py', {}),
    'ae_denoising_mlp_b128': ('experiments/ae.py:denoising', {}),
    'gmm_diag_k10_pca50_full_batch': ('experiments/gmm.py', {}),
}

FLAGS = flags.FLAGS
flags.DEFINE_list('cases', list(CASES), f'Cases to run, from {list(CASES)}.')
flags.DEFINE_integer('windows', 7, 'Timed windows per case (median is kept).')
flags.DEFINE_integer('steps_per_window', 200, 'Train steps per timed window.')
flags.DEFINE_bool('profile', False,
                  'Also profile one window: where the time of a step goes.')
flags.DEFINE_multi_string(
    'set', [], 'Config override for every case, key=value (repeatable), '
    'e.g. --set=model.conv_impl=lax.')
flags.DEFINE_string('profile_dir', None,
                    'Keep the profiler traces here (implies --profile).')


def measure_matmul_gflops(size=2048, repeats=10):
  """Best float32 [size, size] @ [size, size] rate, in GFLOP/s."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  matmul = jax.jit(lambda a, b: a @ b)
  matmul(a, b).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size ** 3 / best / 1e9


@functools.cache
def host_description():
  """'<CPU model> (family, model, widest SIMD), <n> cores' from /proc/cpuinfo.

  VMs often name the CPU only by brand ("AMD EPYC"); family, model and the
  vector extensions tell the generation, which moves the matmul rate a lot.
  """
  fields = {}
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if not line.strip():
          break  # The first processor is enough.
        key, _, value = line.partition(':')
        fields[key.strip()] = value.strip()
  except OSError:
    pass
  name = fields.get('model name') or platform.processor() or platform.machine()
  flags = fields.get('flags', '').split()
  simd = next((f for f in ('avx512f', 'avx2', 'avx', 'neon', 'asimd')
               if f in flags), None)
  details = [f'{key} {fields[key]}' for key in ('cpu family', 'model')
             if key in fields] + ([simd] if simd else [])
  if details:
    name += f' ({", ".join(details)})'
  return f'{name}, {os.cpu_count()} cores'


def random_dataset(like_name, num_train=60_000, num_test=1_000):
  """Random uint8 images with the shape of a known data set (no files)."""
  spec = data_lib.KNOWN_DATASETS[like_name]
  rng = np.random.default_rng(0)

  def split(n):
    return data_lib.Split(
        rng.integers(0, 256, (n, *spec.image_shape), dtype=np.uint8),
        rng.integers(0, spec.num_classes, n).astype(np.int32))

  return data_lib.Dataset(
      name=like_name, train=split(num_train), validation=None,
      test=split(num_test), source=f'random images shaped like {like_name}',
      image_shape=spec.image_shape, num_classes=spec.num_classes,
      class_names=spec.class_names)


def load_data(config):
  try:
    return data_lib.load_dataset(config.data)
  except data_lib.DataError:
    return random_dataset(config.data.name)


def handwritten_vae(exp):
  """The pytorch/examples VAE (784-400-20, Bernoulli, Adam 1e-3) in plain JAX.

  A baseline for vaejax's own loop, on the same device-resident data and
  batch order: dense layers as jnp matmuls, one PRNG key per step (not per
  example), dynamic binarisation with jax.random.bernoulli, the loss as the
  only metric, no sharding. Returns (train_chunk, state) with the signature
  of `train.make_train_chunk(exp)`'s function.
  """
  shape = exp.dataset.image_shape
  pixels = int(np.prod(shape))
  hidden, latent = 400, 20
  layers = {'encoder': (pixels, hidden), 'mean': (hidden, latent),
            'logvar': (hidden, latent), 'decoder': (latent, hidden),
            'output': (hidden, pixels)}
  keys = jax.random.split(jax.random.key(exp.config.seed), len(layers) + 1)
  params = {
      name: {'w': jax.random.normal(key, size) / np.sqrt(size[0]),
             'b': jnp.zeros(size[1])}
      for key, (name, size) in zip(keys, layers.items())}
  optimizer = optax.adam(1e-3)
  state = {'params': params, 'opt_state': optimizer.init(params),
           'step': jnp.int32(0)}
  root_key = keys[-1]

  def dense(params, name, x):
    return x @ params[name]['w'] + params[name]['b']

  def loss_fn(params, x, key):
    h = jax.nn.relu(dense(params, 'encoder', x))
    mean, logvar = dense(params, 'mean', h), dense(params, 'logvar', h)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
    logits = dense(params, 'output', jax.nn.relu(dense(params, 'decoder', z)))
    reconstruction = optax.sigmoid_binary_cross_entropy(logits, x).sum(-1)
    kl = -0.5 * jnp.sum(1 + logvar - mean ** 2 - jnp.exp(logvar), -1)
    return jnp.mean(reconstruction + kl)

  def chunk(state, images, labels, indices):
    del labels

    def step(state, step_indices):
      binarize_key, noise_key = jax.random.split(
          jax.random.fold_in(root_key, state['step']))
      x = images[step_indices].reshape(-1, pixels).astype(jnp.float32) / 255
      x = jax.random.bernoulli(binarize_key, x).astype(jnp.float32)
      loss, grads = jax.value_and_grad(loss_fn)(state['params'], x, noise_key)
      updates, opt_state = optimizer.update(grads, state['opt_state'])
      return {'params': optax.apply_updates(state['params'], updates),
              'opt_state': opt_state, 'step': state['step'] + 1}, loss

    state, losses = lax.scan(step, state, indices)
    return state, {'loss': losses}

  return jax.jit(chunk, donate_argnums=(0,)), state


def train_program(name, exp):
  """(train_chunk, initial state) of a case."""
  if name == HANDWRITTEN:
    return handwritten_vae(exp)
  return train.make_train_chunk(exp), experiment.init_state(exp)


def flops_per_example(exp, state, feed, train_chunk=None):
  """XLA's FLOP count of one train step divided by the batch size.

  `train_chunk` (default: vaejax's) is lowered for a single step. The
  compiled program is one device's share, so its count is multiplied by the
  number of devices.
  """
  train_chunk = train_chunk or train.make_train_chunk(exp)
  cost = train_chunk.lower(
      state, *feed.chunk_args(0, 1)).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  num_devices = exp.mesh.shape[sharding.DATA_AXIS]
  return cost['flops'] * num_devices / exp.config.batch_size


def parse_overrides(assignments):
  """['a.b=1', 'c=lax'] -> {'a.b': 1, 'c': 'lax'} (Python literals or text)."""
  overrides = {}
  for assignment in assignments:
    key, sep, text = assignment.partition('=')
    if not sep or not key:
      raise app.UsageError(f'--set={assignment!r}: expected key=value, e.g. '
                           '--set=model.conv_impl=lax.')
    try:
      overrides[key] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      overrides[key] = text
  return overrides


def run_case(name, matmul_gflops, windows, steps_per_window, profile_dir=None,
             extra_overrides=None):
  spec, overrides = CASES[name]
  config = loading.load_config(
      spec, steps_per_dispatch=steps_per_window,
      **{**overrides, **(extra_overrides or {})})
  exp = stages.build_experiment(config, load_data(config))
  train_chunk, state = train_program(name, exp)
  feed = pipeline.TrainFeed(exp.dataset.train, exp.mesh, config.seed,
                            config.batch_size)
  flops = flops_per_example(exp, state, feed, train_chunk)
  start = time.perf_counter()
  compiled = train_chunk.lower(
      state, *feed.chunk_args(0, steps_per_window)).compile()
  compile_s = time.perf_counter() - start
  state, metrics = compiled(state, *feed.chunk_args(0, steps_per_window))
  jax.block_until_ready(metrics)
  rates = []
  for window in range(1, windows + 1):
    args = feed.chunk_args(window * steps_per_window,
                           (window + 1) * steps_per_window)
    start = time.perf_counter()
    state, metrics = compiled(state, *args)
    jax.block_until_ready(metrics)
    rates.append(steps_per_window * config.batch_size
                 / (time.perf_counter() - start))
  examples_per_s = statistics.median(rates)
  # Accelerators each reach the measured rate; CPU devices (real or faked
  # with --xla_force_host_platform_device_count) share the same cores.
  parallel = (1 if jax.default_backend() == 'cpu'
              else exp.mesh.shape[sharding.DATA_AXIS])
  roofline = parallel * matmul_gflops * 1e9 / flops
  result = {
      'name': name,
      'examples_per_s': round(examples_per_s, 1),
      'compile_s': round(compile_s, 3),
      'flops_per_example': round(flops),
      'matmul_gflops': round(matmul_gflops, 1),
      'roofline_examples_per_s': round(roofline, 1),
      'fraction_of_roofline': round(examples_per_s / roofline, 3),
      'final_loss': float(np.asarray(metrics['loss'])[-1]),
      'batch_size': config.batch_size,
      'devices': exp.mesh.shape[sharding.DATA_AXIS],
      'backend': jax.default_backend(),
      'host': host_description(),
      'data': exp.dataset.source,
  }
  if extra_overrides:
    result['overrides'] = extra_overrides
  if profile_dir:
    window = windows + 1
    _, result['profile'] = profiling.profile_window(
        compiled, state,
        feed.chunk_args(window * steps_per_window,
                        (window + 1) * steps_per_window),
        steps_per_window, config.batch_size, os.path.join(profile_dir, name))
  return result


def main(argv):
  del argv
  unknown = [c for c in FLAGS.cases if c not in CASES]
  if unknown:
    raise app.UsageError(f'Unknown cases {unknown}; known: {list(CASES)}.')
  extra_overrides = parse_overrides(FLAGS.set)
  matmul_gflops = measure_matmul_gflops()
  with tempfile.TemporaryDirectory() as scratch:
    profile_dir = FLAGS.profile_dir or (scratch if FLAGS.profile else None)
    for name in FLAGS.cases:
      try:
        result = run_case(name, matmul_gflops, FLAGS.windows,
                          FLAGS.steps_per_window, profile_dir,
                          extra_overrides)
      except errors.UserError as e:
        cli.fail(f'case {name}: {e}')
      print(json.dumps(result), flush=True)


if __name__ == '__main__':
  app.run(main)
