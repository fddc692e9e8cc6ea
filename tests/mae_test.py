"""Masked autoencoder: patches, masks, position embeddings, the masked-patch
loss, the visible-only encoder and its cost, the family, devices."""
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from multidevice import run_python
from vaejax import errors
from vaejax import evaluators
from vaejax import experiment
from vaejax import stages
from vaejax import train
from vaejax.configs import loading
from vaejax.data import patches as patch_lib
from vaejax.models import classifier as classifier_models
from vaejax.models import mae
from vaejax.objectives import mae as mae_objective
from vaejax.objectives import likelihoods

SHAPE = (28, 28, 1)


def small_family(**overrides):
  config = loading.load_config('experiments/mae.py:runlocal').model
  config.update(overrides)
  likelihood = likelihoods.get_likelihood(
      loading.load_config('experiments/mae.py').objective)
  return mae.mae(config, SHAPE, likelihood)


def init(family, batch=4):
  x = jax.random.uniform(jax.random.key(1), (batch, *SHAPE))
  return family.model.init(jax.random.key(0), x), x


@pytest.mark.parametrize('patch, shape', [(4, (28, 28, 1)), (7, (28, 28, 1)),
                                          (2, (6, 4, 3))])
def test_patchify_cuts_row_major_patches_and_unpatchify_inverts_it(patch,
                                                                   shape):
  x = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)
  patches = np.asarray(patch_lib.patchify(jnp.asarray(x), patch))
  rows, columns = shape[0] // patch, shape[1] // patch
  assert patches.shape == (2, rows * columns, patch * patch * shape[2])
  for n in range(rows * columns):
    r, c = divmod(n, columns)
    block = x[:, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch]
    np.testing.assert_array_equal(patches[:, n], block.reshape(2, -1))
  np.testing.assert_array_equal(
      np.asarray(patch_lib.unpatchify(jnp.asarray(patches), patch, shape)), x)


def test_a_patch_size_that_does_not_divide_the_image_is_a_config_error():
  with pytest.raises(errors.ConfigError, match=r'patch_size=5 does not '
                     r'divide images of shape \(28, 28, 1\): use one of '
                     r'\[1, 2, 4, 7, 14, 28\]'):
    small_family(patch_size=5)


@pytest.mark.parametrize('num_patches, ratio, kept', [(49, 0.75, 12),
                                                      (16, 0.5, 8),
                                                      (49, 0.9, 4)])
def test_masks_hide_exactly_the_masked_count_and_restore_inverts(
    num_patches, ratio, kept):
  keys = jax.random.split(jax.random.key(3), 64)
  keep, restore, mask = map(np.asarray, mae.random_masking(
      keys, num_patches, ratio))
  assert mae.num_kept(num_patches, ratio) == kept
  assert keep.shape == (64, kept) and mask.shape == (64, num_patches)
  np.testing.assert_array_equal(mask.sum(axis=1), num_patches - kept)
  for b in range(64):
    # The kept patches are exactly the unmasked ones, each once.
    assert set(keep[b]) == set(np.flatnonzero(mask[b] == 0))
    assert sorted(restore[b]) == list(range(num_patches))
    # restore sends the kept patches to the first `kept` decoder slots.
    assert all(restore[b][keep[b]] == np.arange(kept))
  # Per-example keys: another example's key gives another mask, the same
  # key the same one.
  assert len({tuple(m) for m in mask}) > 60
  _, _, again = mae.random_masking(keys[:5], num_patches, ratio)
  np.testing.assert_array_equal(np.asarray(again), mask[:5])


def test_position_embedding_is_the_sincos_formula():
  dim, rows, columns = 16, 3, 5
  table = mae.sincos_2d(dim, rows, columns)
  quarter = dim // 4
  for n in range(rows * columns):
    r, c = divmod(n, columns)
    for i in range(quarter):
      w = 10000.0 ** (-i / quarter)
      expected = (np.sin(c * w), np.cos(c * w), np.sin(r * w), np.cos(r * w))
      got = (table[n, i], table[n, quarter + i], table[n, 2 * quarter + i],
             table[n, 3 * quarter + i])
      np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
  with pytest.raises(errors.ConfigError, match='divisible by 4'):
    mae.sincos_2d(10, 2, 2)


@pytest.mark.parametrize('norm_pix', [False, True])
def test_loss_is_the_mse_of_the_masked_patches(norm_pix):
  family = small_family(norm_pix_loss=norm_pix)
  variables, x = init(family)
  keys = jax.random.split(jax.random.key(7), len(x))
  loss_fn = mae_objective.make_masked_patch_mse(None)
  loss, metrics, _ = loss_fn(family.model, variables, {'inputs': x}, keys,
                             0, True)
  prediction, mask = family.model.apply(variables, x, keys,
                                        method=family.model.masked)
  prediction, mask = np.asarray(prediction), np.asarray(mask)
  patches = np.asarray(patch_lib.patchify(x, 4))
  target = patches
  if norm_pix:
    mean = patches.mean(-1, keepdims=True)
    target = (patches - mean) / np.sqrt(patches.var(-1, keepdims=True) + 1e-6)
  for b in range(len(x)):
    masked = mask[b] > 0
    np.testing.assert_allclose(
        loss[b], np.mean((prediction[b, masked] - target[b, masked]) ** 2),
        rtol=1e-5)
  if not norm_pix:
    np.testing.assert_allclose(metrics['masked_pixel_mse'], loss, rtol=1e-6)


def test_visible_targets_get_no_gradient_and_masked_pixels_reach_no_encoder():
  family = small_family()
  variables, x = init(family)
  keys = jax.random.split(jax.random.key(7), len(x))
  prediction, mask = family.model.apply(variables, x, keys,
                                        method=family.model.masked)
  target = patch_lib.patchify(x, 4)
  grad = jax.grad(lambda t: jnp.sum(mae_objective.masked_mean(
      mae_objective.patch_mse(prediction, t), mask)))(target)
  visible = np.asarray(mask) == 0
  assert np.all(np.asarray(grad)[visible] == 0)
  assert np.all(np.abs(np.asarray(grad)[~visible]).sum(-1) > 0)
  # Changing the masked patches of the input changes no encoder token.
  keep, _, _ = mae.random_masking(keys, 49, 0.75)
  noise = jax.random.normal(jax.random.key(9), target.shape)
  changed = patch_lib.unpatchify(
      jnp.where(mask[..., None] > 0, target + noise, target), 4, SHAPE)
  encode = lambda images: family.model.apply(  # noqa: E731
      variables, images, keep, method=family.model.encode)
  np.testing.assert_array_equal(np.asarray(encode(x)),
                                np.asarray(encode(changed)))
  assert not np.allclose(np.asarray(x), np.asarray(changed))


def test_encoder_flops_scale_with_the_visible_count():
  family = small_family(embed_dim=64, depth=2)
  variables, x = init(family, batch=8)

  def flops(kept):
    keep = jnp.tile(jnp.arange(kept)[None], (len(x), 1))
    compiled = jax.jit(lambda v, images: family.model.apply(
        v, images, keep, method=family.model.encode)).lower(
            variables, x).compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):
      analysis = analysis[0]
    return analysis['flops']

  few, many = flops(6), flops(24)
  # Four times the tokens: about four times the work (attention's
  # quadratic part and the patch embedding of every patch aside).
  assert 3.0 < many / few < 5.0, (few, many)


def test_family_represent_and_reconstruct():
  family = small_family()
  variables, x = init(family)
  features = family.represent(variables, x)
  chex.assert_shape(features, (len(x), 32))
  keys = jax.random.split(jax.random.key(2), len(x))
  recon = family.reconstruct(variables, x, keys)
  chex.assert_shape(recon, x.shape)
  # Visible patches are pasted from the input, masked ones predicted.
  _, _, mask = mae.random_masking(keys, 49, 0.75)
  same = np.all(np.asarray(patch_lib.patchify(recon, 4)
                           == patch_lib.patchify(x, 4)), axis=-1)
  np.testing.assert_array_equal(same, np.asarray(mask) == 0)
  rows = family.reconstruction_rows(variables, x, keys)
  assert list(rows) == ['masked input', 'prediction, visible pasted',
                        'original']
  assert family.missing(['sample']) == (
      'mae cannot sample: a masked autoencoder has no prior to sample from')
  # The class token variant represents by it.
  with_cls = small_family(class_token=True)
  cls_variables, _ = init(with_cls)
  tokens = with_cls.model.apply(cls_variables, x,
                                method=with_cls.model.encode)
  np.testing.assert_allclose(with_cls.represent(cls_variables, x),
                             tokens[:, 0], rtol=1e-6)


@pytest.fixture(scope='module')
def mae_run(tiny_data_dir, tmp_path_factory):
  """A runlocal MAE trained on the tiny data: (config, workdir, result)."""
  workdir = str(tmp_path_factory.mktemp('mae_run'))
  config = tiny_config(tiny_data_dir, 'mae', 'runlocal')
  return config, workdir, train.train_and_evaluate(config, workdir)


def test_runlocal_trains_evaluates_and_draws(mae_run):
  config, workdir, result = mae_run
  metrics = result['metrics']
  assert 0 < metrics['masked_pixel_mse'] < 1
  assert 0 <= metrics['probe_accuracy_latent'] <= 1
  with open(os.path.join(workdir, 'eval', 'metrics.json')) as f:
    assert json.load(f)['loss'] == pytest.approx(metrics['loss'])
  assert os.path.exists(result['figure_paths']['reconstructions'])
  # The evaluation of the trained state is the one the run reported.
  exp = stages.build_experiment(config)
  evaluator = evaluators.build(exp)
  again = evaluator.evaluate(result['state'], config.num_train_steps,
                             quick=False)
  assert again['loss'] == pytest.approx(metrics['loss'], rel=1e-6)


def test_fine_tuning_starts_from_the_pretrained_encoder(mae_run,
                                                        tiny_data_dir,
                                                        tmp_path):
  _, workdir, pretrained = mae_run
  config = tiny_config(tiny_data_dir, 'classifier',
                       f'vit,pretrained={workdir},runlocal',
                       num_train_steps=4, steps_per_dispatch=2,
                       **{'eval.max_examples': 64})
  exp = stages.build_experiment(config)
  params = experiment.init_state(exp)['params']
  # The encoder is the MAE's, exactly; the head is new.
  chex.assert_trees_all_equal(jax.device_get(params['encoder']),
                              jax.device_get(
                                  pretrained['state']['params']['encoder']))
  assert set(params) == {'encoder', 'logits'}
  scratch = experiment.init_state(stages.build_experiment(tiny_config(
      tiny_data_dir, 'classifier', 'vit,runlocal')))['params']
  assert not np.allclose(
      jax.tree.leaves(scratch['encoder'])[0],
      jax.tree.leaves(params['encoder'])[0])
  result = train.train_and_evaluate(config, str(tmp_path / 'fine_tuned'))
  assert 0 <= result['metrics']['accuracy'] <= 1
  # Other encoder sizes, or a model with nothing in common, are errors.
  wider = tiny_config(tiny_data_dir, 'classifier',
                      f'vit,pretrained={workdir},runlocal',
                      **{'model.embed_dim': 64})
  with pytest.raises(errors.ConfigError, match="'encoder' have other shapes"):
    experiment.init_state(stages.build_experiment(wider))
  cnn = tiny_config(tiny_data_dir, 'classifier',
                    f'pretrained={workdir},runlocal')
  with pytest.raises(errors.ConfigError,
                     match='none of its parameter groups'):
    experiment.init_state(stages.build_experiment(cnn))


DEVICES_SCRIPT = '''
import json, sys
import jax, numpy as np
sys.path.insert(0, 'tests')
from conftest import tiny_config
from vaejax import train
results = {{}}
for num_devices in (1, 8):
  config = tiny_config({data_dir!r}, 'mae', 'runlocal',
                       num_devices=num_devices, num_train_steps=4,
                       steps_per_dispatch=2, log_every=2, checkpoint_every=4,
                       **{{'eval.extras': (), 'eval.figures': (),
                          'eval.max_examples': 64, 'optimizer.name': 'sgd',
                          'optimizer.learning_rate': 1e-2}})
  out = train.train_and_evaluate(config, {workdir!r} + f'/{{num_devices}}')
  results[num_devices] = {{
      'params': [np.asarray(x).tolist()
                 for x in jax.tree.leaves(out['state']['params'])],
      'loss': out['metrics']['loss']}}
print(json.dumps(results))
'''


def test_one_and_eight_devices_agree(tiny_data_dir, tmp_path):
  results = run_python(DEVICES_SCRIPT.format(data_dir=tiny_data_dir,
                                             workdir=str(tmp_path)),
                       num_devices=8)
  one, eight = results['1'], results['8']
  for a, b in zip(one['params'], eight['params']):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-6)
  np.testing.assert_allclose(one['loss'], eight['loss'], rtol=1e-5)


def test_drop_path_scales_follow_the_linear_rates():
  """Block i's branches are dropped with probability rate * i / (L - 1),
  the kept ones scaled by 1 / (1 - that): each multiplier has mean 1; an
  example's draws depend on its own key only."""
  keys = jax.random.split(jax.random.key(3), 20_000)
  scales = np.asarray(mae.drop_path_scales(keys, 4, 0.3))
  assert scales.shape == (20_000, 4, 2)
  rates = np.array([0.0, 0.1, 0.2, 0.3])
  for i, rate in enumerate(rates):
    kept = 1.0 / (1.0 - rate)
    np.testing.assert_allclose(
        np.unique(scales[:, i]), [kept] if rate == 0 else [0.0, kept],
        rtol=1e-6)
    dropped = np.mean(scales[:, i] == 0.0, axis=0)
    sigma = np.sqrt(rate * (1 - rate) / len(keys))
    np.testing.assert_array_less(np.abs(dropped - rate), 5 * sigma + 1e-9)
  # The attention and MLP branches are drawn apart.
  assert np.mean((scales[:, 3, 0] == 0) != (scales[:, 3, 1] == 0)) > 0.3
  np.testing.assert_array_equal(
      np.asarray(mae.drop_path_scales(keys[:5], 4, 0.3)), scales[:5])


def test_a_dropped_branch_adds_nothing_and_a_kept_one_is_scaled():
  block = mae.TransformerBlock(num_heads=2)
  x = jax.random.normal(jax.random.key(0), (3, 5, 8))
  variables = block.init(jax.random.key(1), x)
  full = block.apply(variables, x)
  np.testing.assert_array_equal(
      np.asarray(block.apply(variables, x, jnp.ones((3, 2)))),
      np.asarray(full))
  np.testing.assert_array_equal(
      np.asarray(block.apply(variables, x, jnp.zeros((3, 2)))),
      np.asarray(x))
  # The attention branch alone, scaled: x + a * attention(x).
  attention = block.apply(variables, x, jnp.array([[1.0, 0.0]] * 3)) - x
  scaled = block.apply(variables, x, jnp.array([[2.5, 0.0]] * 3)) - x
  np.testing.assert_allclose(scaled, 2.5 * attention, rtol=1e-5, atol=1e-6)
  # Per example: example 0 skips the block, the others run it whole.
  mixed = block.apply(variables, x, jnp.array([[0.0, 0.0], [1, 1], [1, 1]]))
  np.testing.assert_array_equal(np.asarray(mixed[0]), np.asarray(x[0]))
  np.testing.assert_allclose(mixed[1:], full[1:], rtol=1e-6, atol=1e-6)


def _vit_classifier(drop_path_rate):
  config = loading.load_config(
      'experiments/classifier.py:vit,runlocal').model
  config.drop_path_rate = drop_path_rate
  config.dropout_rate = 0.0
  return classifier_models.vit_classifier(config, SHAPE, None).model


def test_drop_path_is_on_in_training_only_and_off_at_rate_zero():
  x = jax.random.uniform(jax.random.key(1), (6, *SHAPE))
  keys = jax.random.split(jax.random.key(2), 6)
  plain, dropping = _vit_classifier(0.0), _vit_classifier(0.5)
  variables = plain.init(jax.random.key(0), x)
  reference = plain.apply(variables, x)
  # Rate 0 with keys: the same numbers as before drop path existed (the
  # keys go to dropout only); rate 0.5 without keys (evaluation): no drop.
  np.testing.assert_array_equal(
      np.asarray(plain.apply(variables, x, keys)), np.asarray(reference))
  np.testing.assert_array_equal(
      np.asarray(dropping.apply(variables, x)), np.asarray(reference))
  trained = np.asarray(dropping.apply(variables, x, keys))
  assert not np.allclose(trained, np.asarray(reference), atol=1e-4)
  # Example b's logits depend on its own key only.
  np.testing.assert_allclose(
      np.asarray(dropping.apply(variables, x[:2], keys[:2])), trained[:2],
      rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('model', ['cnn_classifier', 'mlp_classifier'])
def test_drop_path_on_a_model_without_blocks_is_a_config_error(model):
  config = loading.load_config('experiments/classifier.py:runlocal').model
  config.drop_path_rate = 0.1
  builder = getattr(classifier_models, model)
  with pytest.raises(errors.ConfigError,
                     match=rf'drop_path_rate=0.1 .* {model} has none'):
    builder(config, SHAPE, None)
