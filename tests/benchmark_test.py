"""`python -m vaejax.benchmark`: FLOP counts, op categories, the JSON lines."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from vaejax import benchmark
from vaejax import experiment
from vaejax import profiling
from vaejax.configs import loading
from vaejax.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_flops_per_example_of_the_mlp_vae_match_its_matmuls():
  config = loading.load_config('experiments/vae.py')
  exp = experiment.build_experiment(
      config, benchmark.random_dataset('fashion_mnist', 512, 128))
  state = experiment.init_state(exp)
  feed = pipeline.TrainFeed(exp.dataset.train, exp.mesh, 0, config.batch_size)
  flops = benchmark.flops_per_example(exp, state, feed)
  # 784-400-(20 mean, 20 log-variance)-400-784: forward multiply-adds per
  # example, each 2 FLOPs; the backward pass computes the weight gradients
  # (same count) and the input gradients of every layer but the first.
  macs = 784 * 400 + 400 * 40 + 20 * 400 + 400 * 784
  matmul_flops = 2 * macs + 2 * macs + 2 * (macs - 784 * 400)
  # XLA also counts the elementwise work (activations, likelihood, Adam):
  # a few percent on top.
  assert matmul_flops < flops < 1.1 * matmul_flops, (flops, matmul_flops)


def test_union_length_counts_overlaps_once():
  assert profiling._union_length([]) == 0
  assert profiling._union_length([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == 4
  assert profiling._union_length([(4, 10), (0, 1), (2, 5)]) == 9


def test_op_categories_finds_matmuls_random_ops_and_scopes():
  def step(x, w, key):
    with jax.named_scope('inputs'):
      x = x * jax.random.uniform(key, x.shape)
    with jax.named_scope('optimizer'):
      w = w * 0.5 + 1.0
    return jnp.tanh(x @ w)

  args = (jnp.ones((8, 16)), jnp.ones((16, 4)), jax.random.key(0))
  compiled = jax.jit(step).lower(*args).compile()
  categories = profiling.op_categories(compiled.as_text())
  found = set(categories.values())
  assert {'matmul', 'random', 'optimizer'} <= found, categories


def run_benchmark(*flags, env=None):
  result = subprocess.run(
      [sys.executable, '-m', 'vaejax.benchmark', *flags],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env={**os.environ, **(env or {})})
  assert result.returncode == 0, result.stderr[-3000:]
  return [json.loads(line) for line in result.stdout.splitlines()
          if line.startswith('{')]


def test_benchmark_prints_one_json_line_per_case_with_a_profile(tmp_path):
  lines = run_benchmark(
      '--cases=vae_mlp_784_400_20_b128,gmm_diag_k10_pca50_full_batch',
      '--windows=2', '--steps_per_window=10',
      f'--profile_dir={tmp_path}')
  assert [line['name'] for line in lines] == [
      'vae_mlp_784_400_20_b128', 'gmm_diag_k10_pca50_full_batch']
  vae = lines[0]
  for key in ('examples_per_s', 'compile_s', 'roofline_examples_per_s',
              'fraction_of_roofline', 'flops_per_example', 'matmul_gflops'):
    assert vae[key] > 0, key
  # No convolutions: every FLOP counts. The fraction is the median of
  # per-window fractions, so it is near (not equal to) the ratio of the
  # medians.
  assert vae['useful_flops_per_example'] == vae['flops_per_example']
  ratio = vae['examples_per_s'] / vae['roofline_examples_per_s']
  assert 0.5 * ratio < vae['fraction_of_roofline'] < 2 * ratio
  profile = vae['profile']
  # The matmuls are the largest part of this model's step, and removing
  # everything else could only make it faster. Compared with the profiled
  # window's own wall time: the timed windows ran at another moment, and on
  # a loaded machine (CI runs two test workers) the two rates differ by more
  # than the non-matmul share of the step.
  assert profile['ms_per_step']['matmul'] == max(
      profile['ms_per_step'].values())
  profiled_examples_per_s = (
      vae['batch_size'] / profile['wall_ms_per_step'] * 1e3)
  assert profile['matmul_bound_examples_per_s'] > profiled_examples_per_s
  # The time in which some op ran is no more than the step (the profiler's
  # own overhead is in the wall time) and most of it; the ops' times add up
  # to at least that (they can overlap).
  busy = profile['busy_ms_per_step']
  assert 0.5 * profile['wall_ms_per_step'] < busy
  assert busy < 1.05 * profile['wall_ms_per_step']
  assert busy <= sum(profile['ms_per_step'].values()) + 0.01
  assert os.listdir(tmp_path / 'vae_mlp_784_400_20_b128')  # trace kept
  # Each slowest op names its shape, e.g. 'f32[128,400]{1,0} ...'.
  assert all(op[3].startswith(('f32', 'u32', 's32', 'pred', '('))
             for op in profile['slowest_ops']), profile['slowest_ops']


PROGRAM_CASES = [name for name, case in benchmark.CASES.items()
                 if case.program and name != benchmark.HANDWRITTEN]


@pytest.mark.parametrize('name', PROGRAM_CASES)
def test_program_case_trains_and_counts_its_useful_flops(name):
  """Each family's benchmark program at batch 4: its loss goes down over a
  few steps on one batch, and XLA's count with the matmul convolutions
  is within a few percent of the count with XLA's own (lax), plus the
  matmul formulation's copies (never fewer FLOPs than the useful ones)."""
  case = benchmark.CASES[name]
  config = loading.load_config(case.spec, batch_size=4)
  exp = experiment.build_experiment(
      config, benchmark.random_dataset('fashion_mnist', 64, 8))
  feed = pipeline.TrainFeed(exp.dataset.train, exp.mesh, 0, 4)
  counts = {}
  for impl in ('lax', 'matmul'):
    chunk, state = case.program(exp, impl)
    counts[impl] = benchmark.flops_per_example(exp, state, feed, chunk)
  assert counts['lax'] <= counts['matmul'] < 1.25 * counts['lax'], counts
  chunk, state = case.program(exp, 'auto')
  images, labels, indices = feed.chunk_args(0, 1)
  same_batch = jnp.repeat(indices, 8, axis=0)
  _, metrics = chunk(state, images, labels, same_batch)
  losses = metrics['loss']
  assert bool(jnp.all(jnp.isfinite(losses)))
  assert float(losses[-1]) < float(losses[0]), losses


def test_flops_per_example_do_not_depend_on_the_device_count():
  flags = ('--cases=vae_mlp_784_400_20_b128', '--windows=1',
           '--steps_per_window=2')
  one = run_benchmark(*flags)[0]
  two = run_benchmark(
      *flags, env={'XLA_FLAGS': '--xla_force_host_platform_device_count=2'})[0]
  assert two['devices'] == 2 and one['devices'] == 1
  # Only the optimiser update (~3 MFLOP per step, done on every device) is
  # counted once per device: +2.5% per example at batch 128.
  assert abs(two['flops_per_example'] / one['flops_per_example'] - 1) < 0.04


def test_unknown_case_is_a_usage_error():
  result = subprocess.run(
      [sys.executable, '-m', 'vaejax.benchmark', '--cases=nope'],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert 'Unknown cases' in result.stderr and 'vae_mlp_784_400_20_b128' in (
      result.stderr)


def test_handwritten_baseline_is_the_same_model_and_training():
  """The plain-JAX baseline does the work of vaejax's VAE case: the same
  FLOPs per example, and after the same steps on the same batches about the
  same loss (different initial weights and random draws)."""
  vae, handwritten = run_benchmark(
      '--cases=vae_mlp_784_400_20_b128,handwritten_vae_mlp_784_400_20_b128',
      '--windows=2', '--steps_per_window=25')
  assert handwritten['name'] == benchmark.HANDWRITTEN
  assert abs(handwritten['flops_per_example']
             / vae['flops_per_example'] - 1) < 0.03
  # 75 steps take the loss from ~540 nats (784 log 2) to ~290.
  assert vae['final_loss'] < 400
  assert abs(handwritten['final_loss'] / vae['final_loss'] - 1) < 0.03


def test_set_overrides_parse_literals_and_text():
  assert benchmark.parse_overrides(
      ['model.conv_impl=lax', 'batch_size=64', 'model.channels=(8, 16)']) == {
          'model.conv_impl': 'lax', 'batch_size': 64,
          'model.channels': (8, 16)}


def test_set_with_a_mistyped_key_says_which_key_was_meant():
  result = subprocess.run(
      [sys.executable, '-m', 'vaejax.benchmark', '--cases=vae_conv_b128',
       '--set=model.conv_imp=lax'],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert 'Did you mean model.conv_impl?' in result.stderr
  assert not result.stdout


def test_conv_cases_report_both_flop_counts():
  """The conv VAE (an experiment case, rebuilt with conv_impl=lax for its
  useful FLOPs) and a program case, through the command at batch 4."""
  vae, vqvae = run_benchmark(
      '--cases=vae_conv_b128,vqvae_conv_k128_b128', '--windows=1',
      '--steps_per_window=2', '--set=batch_size=4')
  for line in (vae, vqvae):
    assert line['batch_size'] == 4 and line['steps_per_window'] == 2
    assert (line['useful_flops_per_example']
            <= line['flops_per_example']
            < 1.25 * line['useful_flops_per_example']), line
    roofline = line['matmul_gflops'] * 1e9 / line['useful_flops_per_example']
    assert abs(line['roofline_examples_per_s'] / roofline - 1) < 0.01
