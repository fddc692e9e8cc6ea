r"""Learning curves of training runs, read from their TensorBoard events.

  python -m vaejax.curves --workdir W [--workdir W2 ...] [--metric nll_elbo]
      [--label NAME ...] [--start_step N ...] [--steps_per_epoch N]
      [--reference NAME=VALUE ...] [--y_range LOW,HIGH] [--title TEXT]
      [--out PNG]

draws the periodic evaluations of each run (`eval/<metric>`, logged every
`config.eval_every` steps on the validation split when the run holds one
out, else on the test split) against steps, or epochs with
`--steps_per_epoch`, with dashed lines at the `--reference` values
(published numbers, targets), saves the PNG (default
W/images/learning_curve_<metric>.png of the first workdir) and prints the
points and, for a finished run, its final number (W/eval/metrics.json).

The final evaluation (of the best variables, on `config.eval.split`) is
logged apart, under `final/<metric>`, and is not drawn. A resumed run logs
some steps twice (from its checkpoint on), and runs trained before the
`final/` tag logged their final evaluation under `eval/` too (at an
early-stopping step, after the periodic one). So a curve keeps the first
value logged at each multiple of `eval_every` below `num_train_steps`, and
at `num_train_steps` too for a run with early stopping (its last variables
are validated there as a candidate for the best): the periodic evaluations,
each once.

A run started from another's parameters (`config.init_from`) counts its
steps from 0; `--start_step N` (one per --workdir) draws it from step N on,
e.g. the step of the variables it started from, so that it continues the
other's curve.
"""
import logging
import os

from absl import app
from absl import flags
import numpy as np
from tensorboard.backend.event_processing import event_accumulator

from vaejax import cli
from vaejax import errors
from vaejax import images
from vaejax import workdir as workdir_lib
from vaejax.evaluators import plots


def periodic_evaluations(workdir, metric):
  """(steps, values): the run's periodic evaluations of `metric`, sorted by
  step (see the module docstring for which logged values these are)."""
  config = workdir_lib.load_config(workdir)
  if not config.eval_every:
    raise errors.ConfigError(
        f'{workdir} was trained with eval_every=0: it logged no periodic '
        f'evaluations to draw. Train with --config.eval_every=N.')
  events = event_accumulator.EventAccumulator(
      workdir_lib.tensorboard_dir(workdir),
      size_guidance={event_accumulator.SCALARS: 0})  # 0: keep every value.
  events.Reload()
  tag = f'eval/{metric}'
  tags = events.Tags()['scalars']
  if tag not in tags:
    logged = sorted(t[len('eval/'):] for t in tags if t.startswith('eval/'))
    raise errors.UserError(
        f'{workdir} logged no {tag}. Its evaluations logged: '
        f'{", ".join(logged) or "nothing yet"}; pass one of them as --metric.')
  first = {}
  for event in events.Scalars(tag):
    if (event.step % config.eval_every == 0
        and (event.step < config.num_train_steps
             or config.early_stopping_patience)):
      first.setdefault(event.step, event.value)
  if not first:
    raise errors.UserError(
        f'{workdir} has no periodic evaluation of {metric} yet (one every '
        f'{config.eval_every} steps). Train further, then draw again.')
  steps = np.array(sorted(first), np.int64)
  return steps, np.array([first[s] for s in steps], np.float64)


def parse_references(texts):
  """['NAME=VALUE', ...] -> [(NAME, float)]."""
  references = []
  for text in texts:
    name, _, value = text.rpartition('=')
    try:
      references.append((name or value, float(value)))
    except ValueError:
      raise errors.ConfigError(
          f'--reference={text!r}: expected NAME=VALUE with a number, e.g. '
          f'--reference="HVAE (published)=227.37".') from None
  return references


def draw_curves(workdirs, metric, labels=(), steps_per_epoch=None,
                references=(), out=None, title=None, y_range=None,
                start_steps=()):
  """Draws and saves the curves. Returns {'path', 'curves': [(label, steps,
  values)], 'finals': {label: final value or None}}; each run's steps are
  shifted by its `start_steps` entry (default 0)."""
  if labels and len(labels) != len(workdirs):
    raise errors.ConfigError(
        f'{len(labels)} --label for {len(workdirs)} --workdir: give one label '
        f'per workdir, or none (the workdirs name the curves).')
  if start_steps and len(start_steps) != len(workdirs):
    raise errors.ConfigError(
        f'{len(start_steps)} --start_step for {len(workdirs)} --workdir: give '
        f'one per workdir (0 for a run that started from scratch), or none.')
  if any(step < 0 for step in start_steps):
    raise errors.ConfigError(
        f'--start_step={",".join(map(str, start_steps))}: steps are at '
        f'least 0.')
  start_steps = list(start_steps) or [0] * len(workdirs)
  if y_range is not None:
    try:
      y_range = tuple(float(v) for v in y_range)
    except ValueError:
      y_range = ()
    if len(y_range) != 2 or not y_range[0] < y_range[1]:
      raise errors.ConfigError(
          f'--y_range={",".join(map(str, y_range or ["?"]))}: expected two '
          f'numbers LOW,HIGH with LOW < HIGH, e.g. --y_range=220,260.')
  if steps_per_epoch is not None and steps_per_epoch < 1:
    raise errors.ConfigError('--steps_per_epoch must be at least 1.')
  labels = list(labels) or [os.path.basename(os.path.normpath(w))
                            for w in workdirs]
  references = parse_references(references)
  curves, finals = [], {}
  for workdir, label, start in zip(workdirs, labels, start_steps):
    steps, values = periodic_evaluations(workdir, metric)
    curves.append((label, steps + start, values))
    final = workdir_lib.read_metrics_json(workdir) or {}
    finals[label] = final.get(metric)
  scale = steps_per_epoch or 1
  picture, _ = plots.line_plot(
      [(label, steps / scale, values) for label, steps, values in curves],
      x_label='epoch' if steps_per_epoch else 'step', y_label=metric,
      title=title or f'{metric} of the periodic evaluations',
      references=[(f'{name} {value:g}', value) for name, value in references],
      y_range=y_range)
  path = out or os.path.join(workdirs[0], 'images',
                             f'learning_curve_{metric}.png')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  images.save_picture(path, images.Picture(picture))
  return {'path': path, 'curves': curves, 'finals': finals}


def define_flags():
  flags.DEFINE_multi_string('workdir', None, 'A training run (repeat the '
                            'flag to draw several in one plot).')
  flags.DEFINE_string('metric', 'loss', 'A metric of the periodic '
                      'evaluations, as logged under eval/ (e.g. nll_elbo, '
                      'accuracy).')
  flags.DEFINE_multi_string('label', [], 'One name per --workdir for the '
                            'legend (default: the workdirs\' names).')
  flags.DEFINE_multi_integer('start_step', [], 'One per --workdir: the '
                             'step its first step is drawn after (a run '
                             'started by config.init_from from another '
                             'run\'s step N: N); default 0.')
  flags.DEFINE_integer('steps_per_epoch', None, 'Draw epochs (steps / N) '
                       'instead of steps.')
  flags.DEFINE_multi_string('reference', [], 'NAME=VALUE: a dashed line at '
                            'VALUE (a published number, a target).')
  flags.DEFINE_list('y_range', None, 'LOW,HIGH: the y values shown (default: '
                    'every point and reference); curves are cut at its '
                    'edges.')
  flags.DEFINE_string('title', None, 'Above the plot (default: the metric).')
  flags.DEFINE_string('out', None, 'The PNG to write (default: '
                      'W/images/learning_curve_<metric>.png of the first '
                      '--workdir).')
  flags.mark_flags_as_required(['workdir'])


def main(argv):
  cli.refuse_arguments(argv)
  options = flags.FLAGS
  # TensorBoard's reader logs a line per event file it has read to the end.
  logging.getLogger('tensorboard').setLevel(logging.WARNING)
  try:
    result = draw_curves(options.workdir, options.metric, options.label,
                         options.steps_per_epoch, options.reference,
                         options.out, options.title, options.y_range,
                         options.start_step)
  except errors.UserError as e:
    cli.fail(str(e))
  scale = options.steps_per_epoch
  for label, steps, values in result['curves']:
    def at(i):
      return (f'{values[i]:.6g} at step {steps[i]}'
              + (f' (epoch {steps[i] / scale:g})' if scale else ''))
    print(f'{label}: {len(steps)} evaluations of {options.metric}, lowest '
          f'{at(int(np.argmin(values)))}, highest {at(int(np.argmax(values)))},'
          f' last {at(len(values) - 1)}')
    final = result['finals'][label]
    if final is not None:
      print(f'{label}: final {options.metric} (W/eval/metrics.json) '
            f'{final:.6g}')
  print(f'wrote {result["path"]}')


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
