"""Evaluation of a trained model: likelihoods, diagnostics, probes, pictures.

  python -m vaejax.evaluate --workdir W [--k 5000] [--split test|validation]
      [--extras iwae,diagnostics,linear_probe,clustering] [--max_examples N]

loads W/config.json and the latest checkpoint in W/checkpoints, evaluates it
on the held-out split and writes W/eval/evaluation_step<S>_<split>[_k<k>][_n<N>].json
(never overwritten by another step, split, k or number of examples), a copy of it as
W/eval/evaluation.json (the latest run of this command; the train loop's own
final numbers stay in W/eval/metrics.json), PNGs in W/images/, and the same
scalars and images to TensorBoard under W/tensorboard/evaluate.

What is measured is chosen by name: `config.eval.extras` and
`config.eval.figures` (registries in `vaejax.evaluators`, which also holds
the one evaluation path this command shares with the train loop). This
module is the command only.
"""
from absl import app
from absl import flags

from vaejax import cli
from vaejax import data as data_lib
from vaejax import errors
from vaejax import evaluators
from vaejax import metric_writers
from vaejax import sharding
from vaejax import stages
from vaejax import workdir as workdir_lib


def _override_eval_config(config, iwae_samples, split, extras,
                          max_examples=None):
  """Applies the command's choices to the loaded `config.eval`."""
  eval_config = config.eval
  if max_examples is not None:
    eval_config.max_examples = max_examples
  if split is not None:
    eval_config.split = split
  if extras is not None:
    unknown = [name for name in extras if name not in evaluators.EVALUATIONS]
    if unknown:
      raise errors.ConfigError(
          f'--extras: unknown evaluation(s) {", ".join(unknown)}. Known '
          f'evaluations: {", ".join(evaluators.EVALUATIONS.names())}; pass '
          'some of them, comma-separated (e.g. --extras=iwae,linear_probe).')
    eval_config.extras = tuple(extras)
  if iwae_samples is not None:
    eval_config.iwae_samples = iwae_samples
    # k samples are drawn in chunks of iwae_chunk; a smaller k is one chunk.
    eval_config.iwae_chunk = min(eval_config.iwae_chunk, iwae_samples)
    if iwae_samples % eval_config.iwae_chunk:
      raise errors.ConfigError(
          f'--k={iwae_samples} must be a multiple of config.eval.iwae_chunk='
          f'{eval_config.iwae_chunk} (samples are drawn in chunks of that '
          f'size). Choose a multiple, or a k of at most '
          f'{eval_config.iwae_chunk}.')


def evaluate_checkpoint(workdir, iwae_samples=None, split=None, extras=None,
                        max_examples=None):
  """Evaluates the latest checkpoint in `workdir` with its saved config.

  Args:
    workdir: the --workdir of a training run.
    iwae_samples: k of the IWAE estimate; default `config.eval.iwae_samples`.
    split: 'test' or 'validation'; default `config.eval.split`.
    extras: names in `evaluators.EVALUATIONS`; default `config.eval.extras`.
    max_examples: evaluate the split's first N examples (a cheaper IWAE
      estimate of a large model); default `config.eval.max_examples` (None:
      all of them).

  Returns:
    {'step', 'metrics', 'metrics_path', 'figure_paths' {name: PNG path}}.
  """
  config = workdir_lib.load_config(workdir)
  _override_eval_config(config, iwae_samples, split, extras, max_examples)
  trained = stages.restore(workdir, config)
  evaluator = evaluators.build(trained.exp, stages.trained_features)
  state, step = trained.evaluated_state, trained.step
  metrics = evaluator.evaluate(state, step)

  eval_config = config.eval
  name = f'evaluation_step{step}_{eval_config.split}'
  if 'iwae' in eval_config.extras:
    name += f'_k{eval_config.iwae_samples}'
  if max_examples is not None:
    name += f'_n{metrics["eval_examples"]}'
  metrics_path = workdir_lib.write_metrics_json(workdir, step, metrics,
                                                f'{name}.json')
  workdir_lib.write_metrics_json(workdir, step, metrics,
                                 workdir_lib.LATEST_EVALUATION)
  writer = metric_writers.MetricWriter(
      workdir_lib.tensorboard_dir(workdir, 'evaluate'))
  writer.write_scalars(step, {f'{eval_config.split}/{k}': v
                              for k, v in metrics.items()})
  figure_paths = evaluator.save_figures(workdir, sharding.to_host(state), step,
                                        writer)
  writer.close()
  return {'step': step, 'metrics': metrics, 'metrics_path': metrics_path,
          'figure_paths': figure_paths}


def define_flags():
  """The command's flags, defined only when it runs, so that importing this
  module adds nothing to the flags of another command."""
  flags.DEFINE_string('workdir', None,
                      'The --workdir of a training run: its config.json and '
                      'latest checkpoint are evaluated.')
  flags.DEFINE_integer(
      'k', None, 'Importance samples of the IWAE log-likelihood estimate '
      '(default: config.eval.iwae_samples, 5000 for experiments/vae.py).',
      lower_bound=1)
  flags.DEFINE_enum('split', None, ['test', 'validation'],
                    'Held-out split (default: config.eval.split).')
  flags.DEFINE_list(
      'extras', None, 'Evaluations to run, e.g. iwae,diagnostics,linear_probe,'
      'clustering (default: config.eval.extras).')
  flags.DEFINE_integer(
      'max_examples', None, 'Evaluate only the first N examples of the split '
      '(default: config.eval.max_examples, or all of them); the output file '
      'name ends in _n<N>.', lower_bound=1)
  flags.mark_flags_as_required(['workdir'])


def main(argv):
  cli.refuse_arguments(argv)
  cli.quiet_library_logs()
  options = flags.FLAGS
  try:
    result = evaluate_checkpoint(options.workdir, options.k, options.split,
                                 options.extras, options.max_examples)
  except (errors.UserError, data_lib.DataError) as e:
    cli.fail(str(e))
  print(f'Step {result["step"]}: wrote {result["metrics_path"]}')
  for path in result['figure_paths'].values():
    print(f'Step {result["step"]}: wrote {path}')
  print(metric_writers.format_metrics(result['metrics']))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
