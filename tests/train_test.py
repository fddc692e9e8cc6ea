"""The train loop end to end: runlocal training, outputs, exact resume."""
import dataclasses
import glob
import os
import re

import chex
import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from vaejax import evaluators
from vaejax import data
from vaejax import experiment
from vaejax import stages
from vaejax import train
from vaejax import workdir as workdir_lib
from vaejax.data import pipeline
from conftest import tiny_config


def _params_equal(a, b):
  return all(np.array_equal(x, y) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope='module')
def finished_run(tiny_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  config = tiny_config(tiny_data_dir, num_train_steps=20)
  result = train.train_and_evaluate(config, workdir)
  return config, workdir, result


def test_runlocal_trains_and_evaluates(finished_run):
  config, workdir, result = finished_run
  state, metrics = result['state'], result['metrics']
  assert int(state['step']) == config.num_train_steps
  chex.assert_tree_all_finite(state['params'])
  # A trained model is better than the untrained one it started from.
  exp = stages.build_experiment(config)
  untrained_metrics = evaluators.build(exp).evaluate(
      experiment.init_state(exp), 0)
  assert metrics['nll_elbo'] < untrained_metrics['nll_elbo']
  # IWAE is a tighter bound than the ELBO: its NLL is lower.
  assert metrics['nll_iwae'] <= metrics['nll_elbo'] + 1e-3
  np.testing.assert_allclose(
      metrics['bits_per_dim_elbo'], metrics['nll_elbo'] / (784 * np.log(2)),
      rtol=1e-6)


def test_workdir_outputs(finished_run):
  config, workdir, _ = finished_run
  steps = sorted(int(os.path.basename(p)) for p in
                 glob.glob(os.path.join(workdir, 'checkpoints', '*'))
                 if os.path.basename(p).isdigit())
  assert steps[-1] == config.num_train_steps
  assert os.path.exists(os.path.join(workdir, 'config.json'))
  assert workdir_lib.load_config_dict(workdir)['model']['name'] == 'mlp_vae'
  for name in ('reconstructions', 'samples', 'interpolations'):
    assert glob.glob(os.path.join(workdir, 'images', f'{name}_step*.png'))
  assert os.path.exists(os.path.join(workdir, 'eval', 'metrics.json'))


def test_tensorboard_events_read_back(finished_run):
  config, workdir, result = finished_run
  accumulator = event_accumulator.EventAccumulator(
      os.path.join(workdir, 'tensorboard'),
      size_guidance={event_accumulator.IMAGES: 0,
                     event_accumulator.SCALARS: 0})
  accumulator.Reload()
  tags = accumulator.Tags()
  for tag in ('train/loss', 'train/elbo', 'train/examples_per_s',
              'final/nll_iwae', 'final/nll_elbo'):
    assert tag in tags['scalars'], tags['scalars']
  # The run's final evaluation, apart from the periodic eval/ ones.
  nll, = accumulator.Scalars('final/nll_iwae')
  assert nll.step == config.num_train_steps
  np.testing.assert_allclose(nll.value, result['metrics']['nll_iwae'],
                             rtol=1e-6)
  assert 'images/reconstructions' in tags['images']
  assert 'images/samples' in tags['images']


def test_resume_is_bit_exact(tiny_data_dir, tmp_path):
  """20 steps, stop, 20 more == 40 steps in one go, bit for bit."""
  full = train.train_and_evaluate(
      tiny_config(tiny_data_dir, num_train_steps=40), str(tmp_path / 'full'))
  interrupted = str(tmp_path / 'interrupted')
  train.train_and_evaluate(tiny_config(tiny_data_dir, num_train_steps=20),
                           interrupted)
  resumed = train.train_and_evaluate(
      tiny_config(tiny_data_dir, num_train_steps=40), interrupted)
  assert int(resumed['state']['step']) == 40
  assert _params_equal(full['state']['params'], resumed['state']['params'])
  assert _params_equal(full['state']['opt_state'],
                       resumed['state']['opt_state'])
  assert full['metrics']['nll_iwae'] == resumed['metrics']['nll_iwae']


def with_logged_gathers(dataset):
  """`dataset` with training images that record every gather of examples
  by an integer index array (what a host feed does for each chunk); copying
  the whole array to devices (np.asarray) records nothing."""
  gathers = []

  class LoggedImages(np.ndarray):

    def __getitem__(self, index):
      if isinstance(index, np.ndarray) and index.dtype.kind in 'iu':
        gathers.append(index.shape)
      return np.asarray(super().__getitem__(index))

  train_split = data.Split(dataset.train.images.view(LoggedImages),
                           dataset.train.labels)
  return dataclasses.replace(dataset, train=train_split), gathers


def test_host_feed_trains_the_same_model(tiny_data_dir, tmp_path):
  """Host batches with prefetch == training set on device, bit for bit; and
  the host run did gather every step's batch on the host."""
  results, gathers = [], {}
  for on_device in (True, False):
    config = tiny_config(tiny_data_dir, num_train_steps=30,
                         **{'data.on_device': on_device})
    dataset, gathers[on_device] = with_logged_gathers(
        data.load_dataset(config.data))
    results.append(train.train_and_evaluate(
        config, str(tmp_path / str(on_device)), dataset))
  assert _params_equal(results[0]['state']['params'],
                       results[1]['state']['params'])
  assert gathers[True] == []
  # Chunks of steps_per_dispatch = 10 steps of 32 examples.
  assert gathers[False] == [(10, 32)] * 3


def matmul_operand_dtypes(config):
  """The operand types ('bf16', 'f32') of every matmul and convolution in
  the program of one train step."""
  exp = stages.build_experiment(config)
  state = experiment.init_state(exp)
  feed = pipeline.TrainFeed(exp.dataset.train, exp.mesh, config.seed,
                            config.batch_size)
  program = train.make_train_chunk(exp).lower(
      state, *feed.chunk_args(0, 1)).as_text()
  operations = re.findall(
      r'stablehlo\.(?:dot_general|convolution)[^\n]*: \(([^)]*)\)', program)
  return [re.findall(r'x(bf16|f32)>', types) for types in operations]


@pytest.mark.parametrize('arg', ['runlocal', 'conv,runlocal'])
def test_bfloat16_compute_trains_with_finite_loss(tiny_data_dir, tmp_path,
                                                  arg, finished_run):
  config = tiny_config(tiny_data_dir, arg=arg, num_train_steps=20,
                       **{'model.dtype': 'bfloat16'})
  # Every matmul and convolution of the step (forward and backward) takes
  # bfloat16 operands; in float32 mode every one takes float32.
  bfloat16_operands = matmul_operand_dtypes(config)
  float32_operands = matmul_operand_dtypes(
      tiny_config(tiny_data_dir, arg=arg, num_train_steps=20))
  # Forward pass, input and weight gradients of each of the >= 4 layers.
  assert len(bfloat16_operands) == len(float32_operands) >= 10
  assert all(types == ['bf16', 'bf16'] for types in bfloat16_operands), (
      bfloat16_operands)
  assert all(types == ['f32', 'f32'] for types in float32_operands), (
      float32_operands)

  # Only the -ELBO is checked below: no IWAE, probes or figures.
  config.eval.extras, config.eval.figures = (), ()
  result = train.train_and_evaluate(config, str(tmp_path))
  params = result['state']['params']
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
  nll = result['metrics']['nll_elbo']
  assert np.isfinite(nll)
  # Untrained (random) Bernoulli decoders give about 784 log 2 = 543 nats.
  assert nll < 543
  if arg == 'runlocal':
    # The float32 run of the same config: bfloat16's 8-bit mantissas change
    # the result by much more than float32 rounding (~1e-7), but little.
    float32_nll = finished_run[2]['metrics']['nll_elbo']
    assert 1e-5 < abs(nll / float32_nll - 1) < 0.02, (nll, float32_nll)


def test_batch_order_covers_each_epoch_once():
  order = pipeline.BatchOrder(seed=3, num_examples=100, batch_size=10)
  epoch = order.indices(0, 10)
  assert sorted(epoch.ravel().tolist()) == list(range(100))
  np.testing.assert_array_equal(order.indices(5, 3), epoch[5:8])
  assert not np.array_equal(order.indices(10, 10), epoch)


def test_next_boundary_aligns_chunks(tiny_data_dir):
  config = tiny_config(tiny_data_dir, num_train_steps=95, steps_per_dispatch=20,
                       log_every=30, checkpoint_every=50)
  config.eval_every = 0
  boundaries, step = [], 0
  while step < config.num_train_steps:
    step = train.next_boundary(step, config)
    boundaries.append(step)
  assert boundaries == [20, 30, 40, 50, 60, 80, 90, 95]
