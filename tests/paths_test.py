"""Paths that no other test runs, each checked so that it fails if broken:
optimiser options, the dequantize transform and its bits/dim, the
continuous and discretised likelihoods in training, `evaluate --split
validation`, quick evaluations during training, TFDS download-and-prepare,
MNIST from IDX files."""
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from vaejax import curves
from vaejax import data
from vaejax import errors
from vaejax import experiment
from vaejax import optim
from vaejax import stages
from vaejax.configs import loading
from vaejax import train
from vaejax.data import sources
from vaejax.data import transforms
from conftest import CLI_RUN
from conftest import REPO_ROOT
from conftest import run_module
from conftest import tiny_config
from conftest import tiny_flags
from data_test import GeneratedFashionMnist
from data_test import example_multiset
from data_test import random_examples
from data_test import write_idx_dataset
from multidevice import device_env
from multidevice import free_port

FAST_EVAL = {'eval.extras': (), 'eval.figures': ()}


def scalars(logdir):
  """{tag: {step: value}} of the TensorBoard events in `logdir`."""
  accumulator = event_accumulator.EventAccumulator(
      logdir, size_guidance={event_accumulator.SCALARS: 0})
  accumulator.Reload()
  return {tag: {e.step: e.value for e in accumulator.Scalars(tag)}
          for tag in accumulator.Tags()['scalars']}


def max_abs_difference(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# Optimisers and schedules, against their formulas.


def optimizer_config(**fields):
  config = dict(name='sgd', learning_rate=0.1, schedule='constant',
                warmup_steps=0, end_learning_rate=0.0, grad_clip_norm=0.0,
                momentum=0.0, b1=0.9, b2=0.999, weight_decay=0.0,
                layer_decay=0.0)
  return ml_collections.ConfigDict({**config, **fields})


def sgd_learning_rates(config, num_steps):
  """The learning rate of each step, read off SGD's updates of a unit
  gradient."""
  optimizer = optim.make_optimizer(config, num_steps)
  params = {'w': jnp.zeros(())}
  state = optimizer.init(params)
  rates = []
  for _ in range(num_steps):
    updates, state = optimizer.update({'w': jnp.ones(())}, state, params)
    rates.append(-float(updates['w']))
  return np.array(rates)


def test_cosine_schedule_with_warmup():
  peak, end, warmup, num_steps = 0.1, 0.01, 4, 20
  rates = sgd_learning_rates(optimizer_config(
      schedule='cosine', learning_rate=peak, warmup_steps=warmup,
      end_learning_rate=end), num_steps)
  t = np.arange(num_steps)
  expected = np.where(
      t < warmup, peak * t / warmup,
      end + (peak - end) * 0.5 * (1 + np.cos(np.pi * (t - warmup)
                                             / (num_steps - warmup))))
  np.testing.assert_allclose(rates, expected, rtol=1e-5, atol=1e-8)


def test_warmup_constant_schedule():
  rates = sgd_learning_rates(optimizer_config(
      schedule='warmup_constant', learning_rate=0.1, warmup_steps=5), 10)
  np.testing.assert_allclose(rates, 0.1 * np.minimum(np.arange(10) / 5, 1),
                             rtol=1e-6)


def test_adamw_is_adam_plus_decoupled_weight_decay():
  lr, b1, b2, decay, eps = 0.01, 0.8, 0.95, 0.1, 1e-8
  optimizer = optim.make_optimizer(optimizer_config(
      name='adamw', learning_rate=lr, b1=b1, b2=b2, weight_decay=decay), 3)
  params = np.array([1.0, -2.0, 0.5])
  gradients = [np.array([0.3, -1.0, 2.0]), np.array([-0.1, 0.4, 0.0]),
               np.array([1.0, 1.0, -3.0])]
  state = optimizer.init(jnp.asarray(params, jnp.float32))
  m = v = np.zeros(3)
  current = jnp.asarray(params, jnp.float32)
  for t, g in enumerate(gradients, start=1):
    updates, state = optimizer.update(jnp.asarray(g, jnp.float32), state,
                                      current)
    current = current + updates
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g ** 2
    adam = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    params = params - lr * (adam + decay * params)
    np.testing.assert_allclose(current, params, rtol=1e-5)


def test_gradient_clipping_rescales_to_the_global_norm():
  optimizer = optim.make_optimizer(optimizer_config(learning_rate=1.0,
                                                    grad_clip_norm=2.0), 1)
  params = {'a': jnp.zeros(2), 'b': jnp.zeros(())}
  state = optimizer.init(params)
  big = {'a': jnp.array([6.0, 0.0]), 'b': jnp.array(8.0)}  # norm 10
  updates, _ = optimizer.update(big, state, params)
  np.testing.assert_allclose(updates['a'], [-1.2, 0.0], rtol=1e-6)
  np.testing.assert_allclose(updates['b'], -1.6, rtol=1e-6)
  small = {'a': jnp.array([0.3, 0.0]), 'b': jnp.array(0.4)}  # norm 0.5
  updates, _ = optimizer.update(small, state, params)
  np.testing.assert_allclose(updates['a'], [-0.3, 0.0], rtol=1e-6)


def test_layer_decay_scales_each_blocks_adamw_update():
  # A ViT classifier's parameter names: 3 blocks, so block i learns at
  # d ** (3 - i), the patch embedding and class token at d ** 4, the final
  # norm and the head at 1; the update is AdamW's, times that factor.
  d = 0.5
  params = {'encoder': {'patch_embed': {'kernel': jnp.ones((2, 2))},
                        'class_token': jnp.ones((1, 1, 2)),
                        'block0': {'mlp_in': {'kernel': jnp.ones(2)}},
                        'block1': {'norm1': {'scale': jnp.ones(2)}},
                        'block2': {'mlp_out': {'bias': jnp.ones(2)}},
                        'norm': {'scale': jnp.ones(2)}},
            'logits': {'kernel': jnp.ones((2, 3))}}
  factors = {'patch_embed': d ** 4, 'class_token': d ** 4, 'block0': d ** 3,
             'block1': d ** 2, 'block2': d, 'norm': 1.0, 'logits': 1.0}
  fields = dict(name='adamw', learning_rate=0.01, weight_decay=0.1)
  decayed = optim.make_optimizer(optimizer_config(layer_decay=d, **fields), 2)
  plain = optim.make_optimizer(optimizer_config(**fields), 2)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
  states = decayed.init(params), plain.init(params)
  for _ in range(2):
    ours, decayed_state = decayed.update(grads, states[0], params)
    theirs, plain_state = plain.update(grads, states[1], params)
    states = decayed_state, plain_state
    flat_ours = jax.tree_util.tree_flatten_with_path(ours)[0]
    flat_theirs = jax.tree.leaves(theirs)
    for (path, update), reference in zip(flat_ours, flat_theirs):
      group = next(entry.key for entry in path if entry.key in factors)
      np.testing.assert_allclose(update, factors[group] * reference,
                                 rtol=1e-6, err_msg=group)


def test_layer_decay_groups_of_the_vit_classifier(tiny_data_dir):
  config = tiny_config(tiny_data_dir, 'classifier',
                       'vit,cls,layer_decay=0.5,runlocal')
  params = initial_params(config)
  depth = config.model.depth
  factors = optim.layer_decay_multipliers(params, 0.5)
  encoder = factors['encoder']
  assert encoder['patch_embed']['kernel'] == 0.5 ** (depth + 1)
  assert encoder['class_token'] == 0.5 ** (depth + 1)
  for i in range(depth):
    assert set(jax.tree.leaves(encoder[f'block{i}'])) == {0.5 ** (depth - i)}
  assert set(jax.tree.leaves((encoder['norm'], factors['logits']))) == {1.0}


def test_layer_decay_on_a_model_without_blocks_is_a_config_error():
  optimizer = optim.make_optimizer(optimizer_config(layer_decay=0.75), 1)
  with pytest.raises(errors.ConfigError,
                     match=r'layer_decay=0.75 .* has none: set '
                           r'--config.optimizer.layer_decay=0'):
    optimizer.init({'conv_0': {'kernel': jnp.ones(2)}})


def initial_params(config):
  return jax.device_get(experiment.init_state(
      stages.build_experiment(config))['params'])


def test_train_loop_applies_the_schedule_and_the_clipping(tiny_data_dir,
                                                          tmp_path):
  # A warm-up of 1e9 steps: the learning rate of the first 10 steps is at
  # most 1e-11, so Adam (steps of about the learning rate) cannot move any
  # float32 weight of size ~0.05.
  config = tiny_config(tiny_data_dir, num_train_steps=10, **FAST_EVAL, **{
      'optimizer.schedule': 'warmup_constant',
      'optimizer.warmup_steps': 10 ** 9})
  warmed = train.train_and_evaluate(config, str(tmp_path / 'warmup'))
  assert max_abs_difference(warmed['state']['params'],
                            initial_params(config)) == 0.0
  # SGD with learning rate 1 and (the default) momentum 0.9, gradients
  # clipped to norm 1e-6: 10 steps move the weights by at most
  # sum_t sum_{s<=t} 0.9^(t-s) 1e-6 < 1e-4 in global norm.
  config = tiny_config(tiny_data_dir, num_train_steps=10, **FAST_EVAL, **{
      'optimizer.name': 'sgd', 'optimizer.learning_rate': 1.0,
      'optimizer.grad_clip_norm': 1e-6})
  clipped = train.train_and_evaluate(config, str(tmp_path / 'clipped'))
  moved = [np.asarray(a) - np.asarray(b) for a, b in zip(
      jax.tree.leaves(clipped['state']['params']),
      jax.tree.leaves(initial_params(config)))]
  norm = math.sqrt(sum(float(np.sum(d.astype(np.float64) ** 2))
                       for d in moved))
  assert 0 < norm < 1e-4, norm
  # The logged gradient norm is the one before clipping.
  logged = scalars(os.path.join(str(tmp_path / 'clipped'), 'tensorboard'))
  assert logged['train/grad_norm'][10] > 1.0


# The dequantize transform and the likelihoods in training.


def test_dequantize_spreads_each_pixel_uniformly_over_its_bin():
  num = 2000
  images = jnp.tile(jnp.arange(256, dtype=jnp.uint8), (num, 1))
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
      jax.random.key(0), jnp.arange(num))
  x = np.asarray(transforms.get_transform('dequantize').apply(keys, images),
                 np.float64)
  assert x.min() >= 0.0 and x.max() < 1.0
  np.testing.assert_array_equal(np.floor(x * 256), np.asarray(images))
  u = (x * 256 - np.asarray(images)).ravel()  # U[0, 1) if dequantised
  assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / u.size)
  assert abs(u.var() - 1 / 12) < 0.002
  assert np.histogram(u, bins=10, range=(0, 1))[0].min() > 0.09 * u.size


@pytest.mark.parametrize('likelihood, transform, num_params, nats_per_dim', [
    ('gaussian_learned', 'dequantize', 2, math.log(256)),
    ('laplace', 'dequantize', 1, math.log(256)),
    ('discretized_logistic', 'scale', 2, 0.0),
    ('gaussian', 'scale', 1, None),  # a density of [0, 1] data: no bits/dim
])
def test_training_with_a_likelihood(tiny_data_dir, tmp_path, likelihood,
                                    transform, num_params, nats_per_dim):
  config = tiny_config(tiny_data_dir, **{
      'objective.likelihood': likelihood, 'data.transform': transform,
      'eval.extras': ('diagnostics',), 'eval.figures': ()})
  result = train.train_and_evaluate(config, str(tmp_path))
  metrics = result['metrics']
  # The decoder emits the likelihood's parameters for each of 784 pixels.
  widths = {leaf.shape[-1] for leaf in
            jax.tree.leaves(result['state']['params'])}
  assert 784 * num_params in widths and 784 * (3 - num_params) not in widths
  losses = scalars(os.path.join(str(tmp_path), 'tensorboard'))['train/loss']
  assert np.isfinite(list(losses.values())).all()
  assert losses[20] < losses[10], losses
  assert np.isfinite(metrics['nll_elbo'])
  if nats_per_dim is None:
    assert 'bits_per_dim_elbo' not in metrics
  else:
    # -log p of the 8-bit pixels: + log 256 per dimension for a density
    # of dequantised data.
    np.testing.assert_allclose(
        metrics['bits_per_dim_elbo'],
        (metrics['nll_elbo'] + 784 * nats_per_dim) / (784 * math.log(2)),
        rtol=1e-6)


# The evaluation command on the validation split, and quick evaluations.


def test_evaluate_on_the_validation_split(cli_workdir, tmp_path):
  workdir = str(tmp_path / 'w')
  shutil.copytree(cli_workdir, workdir)
  result = run_module('vaejax.evaluate', '--workdir', workdir, '--split',
                      'validation', '--k', '5', '--extras', 'iwae')
  assert result.returncode == 0, result.stderr[-5000:]
  with open(os.path.join(workdir, 'eval',
                         'evaluation_step20_validation_k5.json')) as f:
    validation = json.load(f)
  # The 32 held-out training examples, not the 64 test examples.
  assert validation['eval_examples'] == CLI_RUN['data.validation_size']
  test = run_module('vaejax.evaluate', '--workdir', workdir, '--split',
                    'test', '--k', '5', '--extras', 'iwae')
  assert test.returncode == 0, test.stderr[-5000:]
  with open(os.path.join(workdir, 'eval',
                         'evaluation_step20_test_k5.json')) as f:
    assert json.load(f)['eval_examples'] == 64
  with open(os.path.join(workdir, 'eval', 'evaluation.json')) as f:
    assert json.load(f)['eval_examples'] == 64  # the latest evaluation


def test_quick_evaluation_during_training(cli_workdir, tiny_data_dir,
                                          tmp_path):
  logged = scalars(os.path.join(cli_workdir, 'tensorboard'))
  # eval_every=10 of 20 steps: a quick evaluation at step 10 on the first
  # quick_examples validation examples (the run holds 32 out), then the final
  # one on all the test examples, logged apart under final/.
  assert logged['eval/eval_examples'] == {10: 16.0}
  assert logged['final/eval_examples'] == {20: 64.0}
  assert set(logged['final/nll_elbo']) == {20}
  assert 'eval/nll_iwae' not in logged
  # A learning curve of the run is its periodic evaluation only.
  steps, values = curves.periodic_evaluations(cli_workdir, 'nll_elbo')
  assert steps.tolist() == [10]
  np.testing.assert_allclose(values, [logged['eval/nll_elbo'][10]])
  # The same number as a 10-step run's final evaluation of those examples.
  config = tiny_config(tiny_data_dir, **{
      **CLI_RUN, 'num_train_steps': 10, 'eval_every': 0,
      'eval.max_examples': 16, 'eval.extras': (), 'eval.split': 'validation'})
  ten_steps = train.train_and_evaluate(config, str(tmp_path))
  np.testing.assert_allclose(logged['eval/nll_elbo'][10],
                             ten_steps['metrics']['nll_elbo'], rtol=1e-6)


# Data sources.


def data_config(**values):
  """experiments/vae.py's data block (every key set) with `values`."""
  config = loading.load_config('experiments/vae.py').data
  config.update(values)
  return config


def test_tfds_download_and_prepare_branch(tmp_path, monkeypatch):
  """No prepared copy, TensorFlow installed and the host answering: TFDS
  prepares the data set (here a generated builder, no network) as
  ArrayRecord in tfds_data_dir, and it is read back."""
  examples = random_examples(seed=3)
  built = []

  def builder(name, data_dir, file_format):
    built.append((name, data_dir, file_format))
    return GeneratedFashionMnist(examples=examples, data_dir=data_dir,
                                 file_format=file_format)

  monkeypatch.setattr(sources, 'tensorflow_installed', lambda: True)
  monkeypatch.setattr(sources, 'can_download', lambda url, timeout_s: True)
  monkeypatch.setattr(sources.tfds, 'builder', builder)
  data_dir = tmp_path / 'tfds'
  data_dir.mkdir()  # a directory the user names must exist
  dataset = data.load_dataset(data_config(
      name='fashion_mnist', source='tfds', tfds_data_dir=str(data_dir),
      validation_size=0, download_timeout_s=0.5))
  assert built == [('fashion_mnist', data_dir,
                    sources.tfds.core.FileFormat.ARRAY_RECORD)]
  assert str(data_dir) in dataset.source and 'array_record' in dataset.source
  idx = write_idx_dataset(tmp_path / 'idx', examples)
  from_idx = data.load_dataset(data_config(
      name='fashion_mnist', source='idx', dir=str(idx)))
  for split in ('train', 'test'):
    assert (example_multiset(getattr(dataset, split))
            == example_multiset(getattr(from_idx, split)))


def test_mnist_from_generated_idx_files(tmp_path, monkeypatch):
  examples = random_examples(seed=4)
  directory = write_idx_dataset(tmp_path / 'datasets' / 'mnist', examples)
  write_idx_dataset(tmp_path / 'datasets' / 'fashion_mnist',
                    random_examples(seed=5))
  monkeypatch.setenv(sources.DATA_DIR_ENV_VAR, str(tmp_path / 'datasets'))
  dataset = data.load_dataset(data_config(
      name='mnist', source='idx', dir=None, validation_size=0))
  assert dataset.name == 'mnist'
  assert dataset.source == f'IDX files in {directory}'
  assert dataset.class_names == tuple('0123456789')
  for split, prefix in ((dataset.train, 'train'), (dataset.test, 'test')):
    np.testing.assert_array_equal(split.images[..., 0],
                                  examples[f'{prefix}_images'])
    np.testing.assert_array_equal(split.labels, examples[f'{prefix}_labels'])


# A stop signal to one of several processes.


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(
    tiny_data_dir, tmp_path):
  workdir = str(tmp_path / 'w')
  port = free_port()
  flags = tiny_flags(tiny_data_dir, num_train_steps=5000, checkpoint_every=50,
                     log_every=50, steps_per_dispatch=10, **FAST_EVAL)
  logs = [str(tmp_path / f'process_{i}.log') for i in range(2)]
  processes = []
  for i, log_path in enumerate(logs):
    with open(log_path, 'w') as log:
      processes.append(subprocess.Popen(
          [sys.executable, '-m', 'vaejax.main', '--config',
           'experiments/vae.py:runlocal', '--workdir', workdir, *flags,
           f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
           f'--process_id={i}'],
          cwd=REPO_ROOT, env=device_env(1), stdout=log, stderr=log))
  try:
    first = os.path.join(workdir, 'checkpoints', '50')
    while not os.path.isdir(first):
      assert all(p.poll() is None for p in processes), read(logs[0])
      time.sleep(0.05)
    processes[1].send_signal(signal.SIGTERM)
    statuses = [p.wait(timeout=600) for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
  # Saving is collective: both processes stop at the same step, after
  # saving it together, and exit as a terminated run does.
  assert statuses == [128 + signal.SIGTERM] * 2, [read(log) for log in logs]
  steps = []
  for log_path in logs:
    stopped = re.search(r'vaejax: stopped: SIGTERM received: saved a '
                        r'checkpoint at step (\d+)', read(log_path))
    assert stopped, read(log_path)
    steps.append(int(stopped.group(1)))
  assert steps[0] == steps[1] and 50 <= steps[0] < 5000, steps
  completed = sorted(int(name) for name in
                     os.listdir(os.path.join(workdir, 'checkpoints'))
                     if name.isdigit())
  assert completed[-1] == steps[0], completed


def read(path):
  with open(path) as f:
    return f.read()
