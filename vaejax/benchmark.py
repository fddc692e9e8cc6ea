r"""Training throughput against the machine's matmul roofline.

  python -m vaejax.benchmark [--cases=vae_mlp_784_400_20_b128,...] [--windows=7]

Prints one JSON line per case:
  name                      the case
  examples_per_s            median over timed windows after compilation
  compile_s                 time to compile the train chunk
  flops_per_example         XLA's count for one train step / batch size
  matmul_gflops             float32 matmul rate measured in this run
  roofline_examples_per_s   matmul_gflops / flops_per_example
  fraction_of_roofline      examples_per_s / roofline_examples_per_s
plus the device count, backend and data used. Each case trains through the
same `train.make_train_chunk` as `python -m vaejax.main` (training set on
device, several steps per dispatch), on Fashion-MNIST when it is installed
and on random images of the same shape otherwise.
"""
import json
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from vaejax import data as data_lib
from vaejax import experiment
from vaejax import experiment_files
from vaejax import train
from vaejax.data import pipeline

# name -> (experiment spec, overrides). The first is the pytorch/examples VAE:
# 784-400-20, Bernoulli, Adam 1e-3, batch 128, dynamic binarisation.
CASES = {
    'vae_mlp_784_400_20_b128': ('experiments/vae.py', {}),
    'vae_conv_b128': ('experiments/vae.py:conv', {}),
    'iwae_k5_mlp_b128': ('experiments/vae.py:iwae', {}),
}

FLAGS = flags.FLAGS
flags.DEFINE_list('cases', list(CASES), f'Cases to run, from {list(CASES)}.')
flags.DEFINE_integer('windows', 7, 'Timed windows per case (median is kept).')
flags.DEFINE_integer('steps_per_window', 200, 'Train steps per timed window.')


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


def flops_per_example(exp, state, feed):
  """XLA's FLOP count of one train step divided by the batch size."""
  one_step = train.make_train_chunk(exp)
  cost = one_step.lower(state, *feed.chunk_args(0, 1)).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return cost['flops'] / exp.config.batch_size


def run_case(name, matmul_gflops, windows, steps_per_window):
  spec, overrides = CASES[name]
  config = experiment_files.load_config(
      spec, steps_per_dispatch=steps_per_window, **overrides)
  exp = experiment.build_experiment(config, load_data(config))
  state = experiment.init_state(exp)
  feed = pipeline.TrainFeed(exp.dataset.train, exp.mesh, config.seed,
                            config.batch_size)
  flops = flops_per_example(exp, state, feed)
  train_chunk = train.make_train_chunk(exp)
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
  roofline = matmul_gflops * 1e9 / flops
  return {
      'name': name,
      'examples_per_s': round(examples_per_s, 1),
      'compile_s': round(compile_s, 3),
      'flops_per_example': round(flops),
      'matmul_gflops': round(matmul_gflops, 1),
      'roofline_examples_per_s': round(roofline, 1),
      'fraction_of_roofline': round(examples_per_s / roofline, 3),
      'final_loss': float(np.asarray(metrics['loss'])[-1]),
      'batch_size': config.batch_size,
      'devices': jax.device_count(),
      'backend': jax.default_backend(),
      'data': exp.dataset.source,
  }


def main(argv):
  del argv
  unknown = [c for c in FLAGS.cases if c not in CASES]
  if unknown:
    raise app.UsageError(f'Unknown cases {unknown}; known: {list(CASES)}.')
  matmul_gflops = measure_matmul_gflops()
  for name in FLAGS.cases:
    print(json.dumps(run_case(name, matmul_gflops, FLAGS.windows,
                              FLAGS.steps_per_window)), flush=True)


if __name__ == '__main__':
  app.run(main)
