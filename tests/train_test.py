"""The train loop end to end: runlocal training, outputs, exact resume."""
import glob
import os

import chex
import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from vaejax import evaluators
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
              'eval/nll_iwae', 'eval/nll_elbo'):
    assert tag in tags['scalars'], tags['scalars']
  nll = accumulator.Scalars('eval/nll_iwae')[-1]
  assert nll.step == config.num_train_steps
  np.testing.assert_allclose(nll.value, result['metrics']['nll_iwae'],
                             rtol=1e-6)
  assert 'images/reconstructions' in tags['images']
  assert 'images/samples' in tags['images']


def test_manifold_for_two_dimensional_latent(tiny_data_dir, tmp_path):
  config = tiny_config(tiny_data_dir, arg='latent=2,runlocal',
                       num_train_steps=10)
  train.train_and_evaluate(config, str(tmp_path))
  assert glob.glob(str(tmp_path / 'images' / 'manifold_step*.png'))


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


def test_host_feed_trains_the_same_model(tiny_data_dir, tmp_path):
  """Host batches with prefetch == training set on device, bit for bit."""
  results = [train.train_and_evaluate(
      tiny_config(tiny_data_dir, num_train_steps=30,
                  **{'data.on_device': on_device}), str(tmp_path / str(on_device)))
             for on_device in (True, False)]
  assert _params_equal(results[0]['state']['params'],
                       results[1]['state']['params'])


@pytest.mark.parametrize('arg', ['runlocal', 'conv,runlocal'])
def test_bfloat16_compute_trains_with_finite_loss(tiny_data_dir, tmp_path, arg):
  result = train.train_and_evaluate(
      tiny_config(tiny_data_dir, arg=arg, num_train_steps=10,
                  **{'model.dtype': 'bfloat16'}), str(tmp_path))
  params = result['state']['params']
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
  assert np.isfinite(result['metrics']['nll_elbo'])
  # Untrained (random) Bernoulli decoders give about 784 log 2 = 543 nats.
  assert result['metrics']['nll_elbo'] < 543


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
