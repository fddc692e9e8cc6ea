"""Parameter EMA and early stopping on the validation split, in the one loop
(issue 17, part 1)."""
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tensorboard.backend.event_processing import event_accumulator

from vaejax import checkpoint
from vaejax import errors
from vaejax import evaluators
from vaejax import experiment
from vaejax import stages
from vaejax import train
from vaejax import workdir as workdir_lib
from conftest import tiny_config

# Early stopping on the tiny data: a validation split of 64 of its 256
# training images, an evaluation every 10 steps, and a learning rate high
# enough that the validation loss soon stops improving.
EARLY_STOPPING = {'early_stopping_patience': 2, 'eval_every': 10,
                  'data.validation_size': 64, 'eval.quick_examples': 64,
                  'optimizer.learning_rate': 0.03, 'num_train_steps': 300,
                  'log_every': 10, 'checkpoint_every': 10,
                  'eval.extras': (), 'eval.figures': ()}


def _leaves_equal(a, b):
  return all(np.array_equal(x, y) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_ema_params_are_the_moving_average_of_the_steps(tiny_data_dir,
                                                        tmp_path):
  """ema_t = d ema_{t-1} + (1 - d) params_t from ema_0 = params_0, checked
  on every step's checkpoint against the parameters saved there; and the
  evaluation reads the average, not the parameters."""
  decay, steps = 0.8, 4
  config = tiny_config(tiny_data_dir, ema_decay=decay, num_train_steps=steps,
                       steps_per_dispatch=1, log_every=1, checkpoint_every=1,
                       checkpoints_to_keep=steps + 1,
                       **{'eval.extras': (), 'eval.figures': ()})
  workdir = str(tmp_path / 'ema')
  result = train.train_and_evaluate(config, workdir)
  exp = stages.build_experiment(config)
  initial = experiment.init_state(exp)
  expected = jax.device_get(initial['params'])
  manager = checkpoint.create_manager(workdir, steps + 1)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, initial)
  for step in range(1, steps + 1):
    saved = jax.device_get(
        manager.restore(step, args=ocp.args.StandardRestore(abstract)))
    expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p,
                            expected, saved['params'])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                         atol=1e-7),
                 saved['ema_params'], expected)
  manager.close()
  # The average moved away from the parameters (a test that could not fail
  # if the two were the same arrays).
  assert not _leaves_equal(saved['ema_params'], saved['params'])
  variables = evaluators.variables_of(result['state'])
  assert _leaves_equal(variables['params'], result['state']['ema_params'])


@pytest.fixture(scope='module')
def stopped_run(tiny_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('early_stopping'))
  config = tiny_config(tiny_data_dir, **EARLY_STOPPING)
  return config, workdir, train.train_and_evaluate(config, workdir)


def _validation_losses(workdir):
  events = event_accumulator.EventAccumulator(
      workdir_lib.tensorboard_dir(workdir))
  events.Reload()
  # Each periodic evaluation once: the final (test) one, at the stop step
  # too, is logged apart under final/.
  periodic = events.Scalars('eval/loss')
  steps = [event.step for event in periodic]
  assert len(steps) == len(set(steps)), steps
  final, = events.Scalars('final/loss')
  return {event.step: event.value for event in periodic}, final


def test_early_stopping_keeps_the_best_and_stops(stopped_run):
  config, workdir, result = stopped_run
  state = result['state']
  step = int(state['step'])
  periodic, final = _validation_losses(workdir)
  assert sorted(periodic) == list(range(10, step + 1, 10))
  assert final.step == step
  assert final.value == pytest.approx(result['metrics']['loss'], rel=1e-6)
  best_step = min(periodic, key=periodic.get)
  record = state['early_stopping']
  assert step < config.num_train_steps, 'the run should have stopped early'
  assert int(record['step']) == best_step
  assert float(record['loss']) == pytest.approx(periodic[best_step], rel=1e-6)
  after_best = [s for s in periodic if s > best_step]
  assert len(after_best) == int(record['evals_since_best']) == 2
  assert step == max(after_best)
  # The final evaluation (test split) used the best variables: it equals an
  # evaluation of the record's parameters, not of the last ones.
  exp = stages.build_experiment(config)
  best = experiment.best_state(state)
  assert _leaves_equal(best['params'], record['params'])
  assert not _leaves_equal(best['params'], state['params'])
  again = evaluators.build(exp).evaluate(best, step, quick=False)
  assert again['loss'] == pytest.approx(result['metrics']['loss'], rel=1e-6)
  assert result['metrics']['best_step'] == best_step


def test_rerun_of_a_stopped_run_is_complete(stopped_run):
  config, workdir, result = stopped_run
  again = train.train_and_evaluate(config, workdir)
  assert again['complete']
  assert again['metrics']['loss'] == result['metrics']['loss']
  assert int(again['state']['step']) == int(result['state']['step'])


def test_restored_workdir_evaluates_the_best(stopped_run):
  _, workdir, result = stopped_run
  trained = stages.restore(workdir)
  assert _leaves_equal(trained.variables['params'],
                       result['state']['early_stopping']['params'])


def test_interrupted_run_stops_at_the_same_step_with_the_same_best(
    stopped_run, tiny_data_dir, tmp_path):
  """Stopped at step 15 (between evaluations) and resumed: the same stop
  step, best step and best parameters as the uninterrupted run."""
  _, _, full = stopped_run
  workdir = str(tmp_path / 'interrupted')
  train.train_and_evaluate(
      tiny_config(tiny_data_dir, **{**EARLY_STOPPING, 'num_train_steps': 15}),
      workdir)
  resumed = train.train_and_evaluate(
      tiny_config(tiny_data_dir, **EARLY_STOPPING), workdir)
  assert int(resumed['state']['step']) == int(full['state']['step'])
  assert (int(resumed['state']['early_stopping']['step'])
          == int(full['state']['early_stopping']['step']))
  assert _leaves_equal(resumed['state']['early_stopping']['params'],
                       full['state']['early_stopping']['params'])
  assert resumed['metrics']['loss'] == full['metrics']['loss']


def test_early_stopping_update_follows_the_losses(tiny_data_dir):
  """The record after a sequence of validation losses: the lowest so far,
  its step and parameters (copies, not the donated buffers), and the count
  of evaluations since."""
  config = tiny_config(tiny_data_dir, **EARLY_STOPPING)
  exp = stages.build_experiment(config)
  state = experiment.init_state(exp)
  expected = []
  best, best_step, since = np.inf, 0, 0
  for step, loss in zip(range(10, 70, 10), (5.0, 4.0, 4.5, 3.0, 3.5, 3.0)):
    state = dict(state, params=jax.tree.map(lambda p: p + 1.0,
                                            state['params']))
    state = experiment.early_stopping_update(exp, state, step, loss)
    if loss < best:
      best, best_step, since = loss, step, 0
      best_params = jax.device_get(state['params'])
    else:
      since += 1
    record = state['early_stopping']
    assert (float(record['loss']), int(record['step']),
            int(record['evals_since_best'])) == (best, best_step, since)
    expected.append((float(record['loss']), int(record['step']),
                     int(record['evals_since_best'])))
    assert _leaves_equal(record['params'], best_params)
    assert (jax.tree.leaves(record['params'])[0]
            is not jax.tree.leaves(state['params'])[0])
  assert expected == [(5.0, 10, 0), (4.0, 20, 0), (4.0, 20, 1), (3.0, 40, 0),
                      (3.0, 40, 1), (3.0, 40, 2)]
  assert experiment.stopped_early(state, config)


@pytest.mark.parametrize('overrides, fragment', [
    ({'data.validation_size': 0}, 'config.data.validation_size=0'),
    ({'eval_every': 0}, 'config.eval_every=0'),
])
def test_early_stopping_needs_a_validation_split_and_evaluations(
    tiny_data_dir, tmp_path, overrides, fragment):
  config = tiny_config(tiny_data_dir, **{**EARLY_STOPPING, **overrides})
  with pytest.raises(errors.ConfigError, match=fragment):
    train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


def test_paper_variant_is_the_published_protocol():
  from vaejax.configs import loading
  config = loading.load_config('experiments/vae.py:paper')
  assert config.batch_size == 100
  assert config.data.validation_size == 10_000
  assert config.model.hidden_sizes == (300, 300)
  assert config.model.latent_dim == 40 and config.model.gated
  assert tuple(config.model.logvar_range) == (-6.0, 2.0)
  assert config.optimizer.learning_rate == 5e-4
  # Warm-up over 100 epochs of 50k images, patience 50 evaluations of one
  # epoch each.
  assert config.objective.kl_warmup_steps == 100 * 500
  assert config.eval_every == 500 and config.early_stopping_patience == 50


def test_the_last_step_is_validated_as_a_candidate_for_the_best(
    tiny_data_dir, tmp_path):
  """A run that trains all its steps validates its last variables too (when
  the last step is an evaluation step): they can be the best, and the final
  evaluation then uses them, not those of the evaluation before."""
  config = tiny_config(tiny_data_dir, **{
      **EARLY_STOPPING, 'early_stopping_patience': 100,
      'num_train_steps': 20, 'optimizer.learning_rate': 1e-3})
  workdir = str(tmp_path / 'all_steps')
  result = train.train_and_evaluate(config, workdir)
  state = result['state']
  assert int(state['step']) == 20
  periodic, final = _validation_losses(workdir)
  assert sorted(periodic) == [10, 20]
  best_step = min(periodic, key=periodic.get)
  assert result['metrics']['best_step'] == best_step
  assert int(state['early_stopping']['step']) == best_step
  # At this small learning rate the validation loss still falls: the last
  # variables are the best, and the final evaluation is of them.
  assert best_step == 20, periodic
  assert _leaves_equal(experiment.best_state(state)['params'],
                       state['params'])
  assert final.step == 20
