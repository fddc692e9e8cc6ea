"""Learning curves: round ticks, the plot's pixel map, which logged values
a curve keeps, and the `python -m vaejax.curves` command."""
import os
import time

import numpy as np
import pytest

from conftest import assert_clean_failure
from conftest import run_module
from vaejax import curves
from vaejax import errors
from vaejax import metric_writers
from vaejax import workdir as workdir_lib
from vaejax.configs import loading
from vaejax.evaluators import plots


def test_ticks_are_round_and_inside_the_range():
  np.testing.assert_array_equal(plots.nice_ticks(0.0, 1.0),
                                [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
  np.testing.assert_array_equal(plots.nice_ticks(0.0, 1234.0), [0, 500, 1000])
  np.testing.assert_array_equal(plots.nice_ticks(224.3, 251.7),
                                [230, 240, 250])
  np.testing.assert_array_equal(plots.nice_ticks(-0.07, 0.07),
                                [-0.05, 0.0, 0.05])


def test_line_plot_draws_each_point_where_its_axes_map_it():
  xs, ys = np.arange(1, 11), np.linspace(300.0, 240.0, 10)
  picture, axes = plots.line_plot([('curve', xs, ys)], 'epoch', 'nats', 't',
                                  references=[('target 227', 227.0)])
  left, top, right, bottom = axes.box
  # The box spans the padded ranges: the lowest y (the reference) is above
  # the bottom edge, the highest point below the top edge.
  _, reference_y = axes.pixels(1, 227.0)
  assert top < axes.pixels(1, 300.0)[1] < reference_y < bottom
  px, py = axes.pixels([axes.x_range[0], axes.x_range[1]],
                       [axes.y_range[0], axes.y_range[1]])
  np.testing.assert_allclose(px, [left, right])
  np.testing.assert_allclose(py, [bottom, top])
  colour = np.array(plots.class_colours(1)[0]) / 255.0
  for x, y in zip(*axes.pixels(xs, ys)):
    np.testing.assert_allclose(picture[int(round(y)), int(round(x))], colour,
                               atol=1e-6)
  # The reference is dashed grey: grey and white pixels alternate on its row.
  row = picture[int(round(reference_y)), left + 1:right - 1]
  grey = np.array(plots.FRAME_GREY) / 255.0
  assert 0.2 < np.mean(np.all(np.isclose(row, grey, atol=1e-6), -1)) < 0.8
  # A y_range narrower than the data: the curve stops at the box's edges.
  picture, axes = plots.line_plot([('curve', xs, ys)], 'epoch', 'nats', 't',
                                  y_range=(230.0, 260.0))
  left, top, right, bottom = axes.box
  coloured = np.all(np.isclose(picture, colour, atol=1e-6), -1)
  coloured[:, right + 8:] = False  # the legend's swatch
  rows, columns = np.nonzero(coloured)
  assert rows.size and top <= rows.min() and rows.max() <= bottom
  assert left <= columns.min() and columns.max() <= right
  with pytest.raises(ValueError, match='as many x as y'):
    plots.line_plot([('bad', [1, 2], [1.0])], 'x', 'y', 't')


@pytest.fixture
def logged_run(tmp_path):
  """A workdir whose events are those of a run that logged periodic
  evaluations at steps 10 and 20, was resumed from step 10 (steps 20 logged
  again by a second writer, as a resumed run's events are), stopped early at
  step 20 (the final evaluation follows under the same tag) and has no
  periodic evaluation at its last step 30."""
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  config = loading.load_config('experiments/vae.py:runlocal')
  config.eval_every, config.num_train_steps = 10, 30
  workdir_lib.save_config(workdir, config)
  logdir = workdir_lib.tensorboard_dir(workdir)
  first = metric_writers.MetricWriter(logdir)
  first.write_scalars(10, {'eval/nll_elbo': 300.0, 'train/loss': 1.0})
  first.write_scalars(15, {'train/loss': 2.0})
  first.write_scalars(20, {'eval/nll_elbo': 280.0})
  first.close()
  time.sleep(1.1)  # Event file names carry the second they were opened.
  resumed = metric_writers.MetricWriter(logdir)
  resumed.write_scalars(20, {'eval/nll_elbo': 280.0})
  resumed.write_scalars(20, {'eval/nll_elbo': 281.5})  # final (pre-final/ tag)
  resumed.write_scalars(30, {'eval/nll_elbo': 270.0})  # final (pre-final/ tag)
  resumed.close()
  return workdir


def test_a_curve_keeps_each_periodic_evaluation_once(logged_run):
  steps, values = curves.periodic_evaluations(logged_run, 'nll_elbo')
  np.testing.assert_array_equal(steps, [10, 20])
  np.testing.assert_array_equal(values, [300.0, 280.0])
  with pytest.raises(errors.UserError, match='logged: nll_elbo; pass one'):
    curves.periodic_evaluations(logged_run, 'accuracy')


def test_a_run_with_early_stopping_keeps_its_last_steps_validation(tmp_path):
  """With early stopping the loop validates the last step too (a candidate
  for the best variables); its final evaluation is under final/."""
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  config = loading.load_config('experiments/vae.py:runlocal')
  config.eval_every, config.num_train_steps = 10, 20
  config.early_stopping_patience, config.data.validation_size = 5, 100
  workdir_lib.save_config(workdir, config)
  writer = metric_writers.MetricWriter(workdir_lib.tensorboard_dir(workdir))
  writer.write_scalars(10, {'eval/nll_elbo': 300.0})
  writer.write_scalars(20, {'eval/nll_elbo': 290.0})
  writer.write_scalars(20, {'final/nll_elbo': 295.0})
  writer.close()
  steps, values = curves.periodic_evaluations(workdir, 'nll_elbo')
  np.testing.assert_array_equal(steps, [10, 20])
  np.testing.assert_array_equal(values, [300.0, 290.0])


def test_bad_choices_are_refused_before_a_picture_is_written(logged_run):
  out = os.path.join(logged_run, 'curve.png')
  with pytest.raises(errors.ConfigError, match='expected NAME=VALUE'):
    curves.draw_curves([logged_run], 'nll_elbo', references=['HVAE=x'],
                       out=out)
  for y_range in (['260', '220'], ['x', '1'], ['1']):
    with pytest.raises(errors.ConfigError, match='LOW < HIGH'):
      curves.draw_curves([logged_run], 'nll_elbo', y_range=y_range, out=out)
  with pytest.raises(errors.ConfigError, match='one label per workdir'):
    curves.draw_curves([logged_run], 'nll_elbo', labels=['a', 'b'], out=out)
  with pytest.raises(errors.ConfigError, match='one per workdir'):
    curves.draw_curves([logged_run], 'nll_elbo', start_steps=[0, 5], out=out)
  with pytest.raises(errors.ConfigError, match='at least 0'):
    curves.draw_curves([logged_run], 'nll_elbo', start_steps=[-5], out=out)
  with pytest.raises(errors.UserError, match='does not exist'):
    curves.draw_curves([logged_run + '_missing'], 'nll_elbo', out=out)
  assert not os.path.exists(out)


def test_command_draws_and_prints_the_curve(logged_run):
  result = run_module('vaejax.curves', '--workdir', logged_run, '--metric',
                      'nll_elbo', '--steps_per_epoch', '10', '--reference',
                      'published=227.37', '--reference', 'other=228.7',
                      '--y_range=220,320', '--start_step', '10')
  assert result.returncode == 0, result.stderr[-3000:]
  assert ('run: 2 evaluations of nll_elbo, lowest 280 at step 30 (epoch 3), '
          'highest 300 at step 20 (epoch 2), last 280 at step 30 (epoch 3)'
          in result.stdout)
  path = os.path.join(logged_run, 'images', 'learning_curve_nll_elbo.png')
  assert f'wrote {path}' in result.stdout
  assert os.path.getsize(path) > 0
  bad = run_module('vaejax.curves', '--workdir', logged_run, '--metric',
                   'kl')
  assert_clean_failure(bad, 'logged no eval/kl', 'pass one of them')


def test_start_step_draws_a_continued_run_after_the_one_it_continues(
    logged_run, tmp_path):
  out = str(tmp_path / 'curve.png')
  result = curves.draw_curves([logged_run, logged_run], 'nll_elbo',
                              labels=['first', 'continued'],
                              start_steps=[0, 40], out=out)
  (_, first, values), (_, continued, same_values) = result['curves']
  np.testing.assert_array_equal(first, [10, 20])
  np.testing.assert_array_equal(continued, [50, 60])
  np.testing.assert_array_equal(values, same_values)
  assert os.path.exists(out)
