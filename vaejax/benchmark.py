r"""Training throughput against the machine's matmul roofline.

  python -m vaejax.benchmark [--cases=vae_mlp_784_400_20_b128,...] [--windows=7]
      [--steps_per_window=N] [--profile] [--set=model.conv_impl=lax ...]

Prints one JSON line per case:
  name                      the case
  examples_per_s            median over timed windows after compilation
  compile_s                 time to compile the train chunk
  flops_per_example         XLA's count for one train step / batch size
  useful_flops_per_example  the same count with conv_impl=lax (XLA's own
                            convolutions: no copies, no zero taps); for
                            cases without convolutions, flops_per_example
  matmul_gflops             float32 2048^2 matmul rate, median of the rates
                            measured right before each timed window
  roofline_examples_per_s   matmul_gflops / useful_flops_per_example
  fraction_of_roofline      median over windows of the window's rate over
                            the roofline of the matmul rate measured beside
                            it (so a load that comes and goes on a shared
                            machine moves both alike)
plus the device count, backend, host CPU and data used. The experiment
cases train through the same `train.make_train_chunk` as
`python -m vaejax.main` (training set on device, several steps per
dispatch); the program cases (`benchmark_programs`: the handwritten VAE
baseline, gated PixelCNNs, a VQ-VAE, hierarchical top-down blocks) build
their networks from vaejax.models directly, with the same device-resident
data. Data: Fashion-MNIST when it is installed, random images of its shape
otherwise.

With --profile, one more window runs under `jax.profiler` and the line gains
`profile` (vaejax/profiling.py): milliseconds per step spent in each kind of
XLA op (matmul = dots and convolutions; random = PRNG hashing; collectives;
then the rest by the train step's named scope: inputs, loss_and_gradient,
metrics, optimizer), the slowest ops with their HLO shapes,
`busy_ms_per_step` (the time in which some op ran: XLA's CPU runtime runs
independent ops concurrently, so the per-kind times can add up to more than
the wall time) and `matmul_bound_examples_per_s`, the rate if everything but
the matmuls were free. --profile_dir keeps the trace (open it in Perfetto
or TensorBoard).
"""
import ast
import dataclasses
import functools
import json
import os
import platform
import statistics
import tempfile
import time
from typing import Any, Callable, Optional

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from vaejax import benchmark_programs
from vaejax import cli
from vaejax import data as data_lib
from vaejax import errors
from vaejax import experiment
from vaejax import profiling
from vaejax import sharding
from vaejax import stages
from vaejax import train
from vaejax.configs import loading
from vaejax.data import pipeline

HANDWRITTEN = 'handwritten_vae_mlp_784_400_20_b128'


@dataclasses.dataclass(frozen=True)
class Case:
  """An experiment file (data, batch size, seed; the model too unless
  `program`), its overrides, a `benchmark_programs` builder (exp, conv_impl)
  -> (train_chunk, state), whether it has convolutions (then its useful
  FLOPs are counted with conv_impl=lax) and its default steps per window."""
  spec: str
  overrides: Any = dataclasses.field(default_factory=dict)
  program: Optional[Callable[..., Any]] = None
  convolutional: bool = False
  steps_per_window: int = 200


# The first is the pytorch/examples VAE: 784-400-20, Bernoulli, Adam 1e-3,
# batch 128, dynamic binarisation. The GMM case is full-batch EM (one step =
# one EM iteration over all 60k training examples) on the 50 principal
# components. Conv cases take ~0.1-1 s a step on 2 CPU cores: fewer steps.
CASES = {
    'vae_mlp_784_400_20_b128': Case('experiments/vae.py'),
    # The same VAE written out in plain JAX: what the registries,
    # per-example keys and metrics of vaejax's loop cost.
    HANDWRITTEN: Case('experiments/vae.py',
                      program=benchmark_programs.handwritten_vae),
    'vae_conv_b128': Case('experiments/vae.py:conv', convolutional=True,
                          steps_per_window=40),
    'iwae_k5_mlp_b128': Case('experiments/vae.py:iwae'),
    'ae_mlp_784_512_32_b128': Case('experiments/ae.py'),
    'ae_denoising_mlp_b128': Case('experiments/ae.py:denoising'),
    'gmm_diag_k10_pca50_full_batch': Case('experiments/gmm.py'),
    'pixelcnn_gated_7x7_k128_b128': Case(
        'experiments/vae.py', program=benchmark_programs.pixelcnn_7x7,
        convolutional=True, steps_per_window=40),
    'pixelcnn_gated_28x28_k2_b32': Case(
        'experiments/vae.py', {'batch_size': 32},
        program=benchmark_programs.pixelcnn_28x28, convolutional=True,
        steps_per_window=10),
    'vqvae_conv_k128_b128': Case(
        'experiments/vae.py', program=benchmark_programs.vqvae,
        convolutional=True, steps_per_window=40),
    'hierarchical_top_down_3x14x14_b128': Case(
        'experiments/vae.py', program=benchmark_programs.hierarchical_top_down,
        convolutional=True, steps_per_window=40),
}

FLAGS = flags.FLAGS
flags.DEFINE_list('cases', list(CASES), f'Cases to run, from {list(CASES)}.')
flags.DEFINE_integer('windows', 7, 'Timed windows per case (median is kept).')
flags.DEFINE_integer('steps_per_window', None,
                     'Train steps per timed window (default: the case\'s own, '
                     '200 for the MLP cases, 10-40 for the conv ones).')
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


def train_program(case, exp, conv_impl=None):
  """(train_chunk, initial state) of a case, its convolutions by
  `conv_impl` (default: the config's `model.conv_impl`)."""
  if case.program:
    return case.program(exp, conv_impl or exp.config.model.conv_impl)
  if conv_impl is not None and conv_impl != exp.config.model.conv_impl:
    config = exp.config.copy_and_resolve_references()
    config.model.conv_impl = conv_impl
    exp = experiment.build_experiment(config, exp.dataset)
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


def run_case(name, windows, steps_per_window=None, profile_dir=None,
             extra_overrides=None):
  case = CASES[name]
  steps = steps_per_window or case.steps_per_window
  config = loading.load_config(
      case.spec, steps_per_dispatch=steps,
      **{**case.overrides, **(extra_overrides or {})})
  exp = stages.build_experiment(config, load_data(config))
  train_chunk, state = train_program(case, exp)
  feed = pipeline.TrainFeed(exp.dataset.train, exp.mesh, config.seed,
                            config.batch_size)
  flops = flops_per_example(exp, state, feed, train_chunk)
  useful_flops = flops
  if case.convolutional:
    # The parameters are the same for every conv_impl: only the program
    # changes.
    lax_chunk, _ = train_program(case, exp, 'lax')
    useful_flops = flops_per_example(exp, state, feed, lax_chunk)
  start = time.perf_counter()
  compiled = train_chunk.lower(state, *feed.chunk_args(0, steps)).compile()
  compile_s = time.perf_counter() - start
  state, metrics = compiled(state, *feed.chunk_args(0, steps))
  jax.block_until_ready(metrics)
  # Accelerators each reach the measured rate; CPU devices (real or faked
  # with --xla_force_host_platform_device_count) share the same cores.
  parallel = (1 if jax.default_backend() == 'cpu'
              else exp.mesh.shape[sharding.DATA_AXIS])
  rates, matmul_rates, fractions = [], [], []
  for window in range(1, windows + 1):
    matmul_rates.append(measure_matmul_gflops(repeats=3))
    args = feed.chunk_args(window * steps, (window + 1) * steps)
    start = time.perf_counter()
    state, metrics = compiled(state, *args)
    jax.block_until_ready(metrics)
    rates.append(steps * config.batch_size / (time.perf_counter() - start))
    fractions.append(rates[-1] * useful_flops
                     / (parallel * matmul_rates[-1] * 1e9))
  examples_per_s = statistics.median(rates)
  matmul_gflops = statistics.median(matmul_rates)
  result = {
      'name': name,
      'examples_per_s': round(examples_per_s, 1),
      'compile_s': round(compile_s, 3),
      'flops_per_example': round(flops),
      'useful_flops_per_example': round(useful_flops),
      'matmul_gflops': round(matmul_gflops, 1),
      'roofline_examples_per_s': round(
          parallel * matmul_gflops * 1e9 / useful_flops, 1),
      'fraction_of_roofline': round(statistics.median(fractions), 3),
      'final_loss': float(np.asarray(metrics['loss'])[-1]),
      'batch_size': config.batch_size,
      'steps_per_window': steps,
      'devices': exp.mesh.shape[sharding.DATA_AXIS],
      'backend': jax.default_backend(),
      'host': host_description(),
      'data': exp.dataset.source,
  }
  if extra_overrides:
    result['overrides'] = extra_overrides
  if os.environ.get('XLA_FLAGS'):
    result['xla_flags'] = os.environ['XLA_FLAGS']
  if profile_dir:
    window = windows + 1
    _, result['profile'] = profiling.profile_window(
        compiled, state, feed.chunk_args(window * steps, (window + 1) * steps),
        steps, config.batch_size, os.path.join(profile_dir, name))
  return result


def main(argv):
  del argv
  unknown = [c for c in FLAGS.cases if c not in CASES]
  if unknown:
    raise app.UsageError(f'Unknown cases {unknown}; known: {list(CASES)}.')
  extra_overrides = parse_overrides(FLAGS.set)
  with tempfile.TemporaryDirectory() as scratch:
    profile_dir = FLAGS.profile_dir or (scratch if FLAGS.profile else None)
    for name in FLAGS.cases:
      try:
        result = run_case(name, FLAGS.windows, FLAGS.steps_per_window,
                          profile_dir, extra_overrides)
      except errors.UserError as e:
        cli.fail(f'case {name}: {e}')
      print(json.dumps(result), flush=True)


if __name__ == '__main__':
  app.run(main)
