r"""A supervised classifier on Fashion-MNIST: the feature extractor of the
sample-quality metrics (`python -m vaejax.evaluate --extras=sample_quality`
reads its checkpoint from workdirs/classifier by default).

  python -m vaejax.main --config experiments/classifier.py \
      --workdir workdirs/classifier

Default: CNN, three stages of one 3x3 GELU convolution (32, 64, 128
channels) each followed by 2x2 max pooling, a 256-unit GELU layer (the
features), dropout 0.3, 10 logits; softmax cross-entropy with label
smoothing 0.1 on images scaled to [0, 1], each training image shifted by up
to 2 pixels and mirrored left-right at random (on device, per-example keys);
AdamW 3e-3 (weight decay 5e-4) with 200 warm-up steps and cosine decay,
batch 128, 10 epochs. Measured (README "Sample quality"): test accuracy
0.9256 in 9 min 56 s of wall time (576 s of training) on a 2-core CPU.

Variants, comma-separated after a colon and combinable:
  mlp          an MLP 784-512-256 (ReLU; the 256 units are the features)
  vit          a ViT of experiments/mae.py's encoder sizes (patch 4, width
               128, 6 blocks; `patch=<p>`, `cls` as there), mean token ->
               logits; AdamW 1e-3, weight decay 0.05, 1 epoch warm-up
  pretrained=<W>  start from the parameters of the run in W that this model
               shares (with vit: the encoder of an experiments/mae.py run;
               the head starts fresh): fine-tuning
  patch=<p>, cls  the ViT's patch size and class token (match the MAE's)
  layer_decay=<d>  layer-wise learning-rate decay (MAE fine-tuning, BEiT):
               block i of the L blocks learns at d ** (L - i) times the
               rate, the patch embedding at d ** (L + 1), the head at 1
               (a ViT only; MAE fine-tunes ViT-B with 0.65, ViT-L with 0.75)
  drop_path=<r>  stochastic depth (a ViT only; DeiT, MAE fine-tuning): in
               training, each example skips block i's attention and MLP
               branches with probability r * i / (L - 1) each, the kept
               ones scaled by the inverse (default 0.1, MAE's for ViT-B)
  mnist        MNIST instead of Fashion-MNIST
  epochs=<n>   train for n epochs (of 60,000 / 128 steps)
  runlocal     a few steps on a small evaluation: finishes in seconds

  python -m vaejax.main --config experiments/classifier.py:mlp,epochs=5 \
      --workdir W
"""
import ml_collections
from ml_collections import config_dict

from vaejax import errors
from vaejax.configs import common

KNOWN_VARIANTS = ('mlp', 'vit', 'pretrained', 'patch', 'cls', 'layer_decay',
                  'drop_path', 'mnist', 'epochs', 'runlocal')

MODELS = {'mlp': 'mlp_classifier', 'vit': 'vit_classifier'}


def get_config(arg=None):
  variants = common.parse_variants(arg, KNOWN_VARIANTS,
                                   'experiments/classifier.py')
  if len(set(MODELS) & set(variants)) > 1:
    raise errors.ConfigError(
        f'experiments/classifier.py:{arg} names more than one model '
        f'({", ".join(sorted(set(MODELS) & set(variants)))}): choose one.')
  config = ml_collections.ConfigDict()
  steps_per_epoch = 60_000 // 128
  epochs = common.variant_value(variants, 'epochs', 10)
  common.training(config, batch_size=128,
                  num_train_steps=epochs * steps_per_epoch,
                  eval_every=2 * steps_per_epoch)
  config.data = common.data(variants, 'scale')

  config.model = ml_collections.ConfigDict(dict(
      name=next((MODELS[v] for v in MODELS if v in variants),
                'cnn_classifier'),
      num_classes=10,
      # cnn_classifier: one stage per entry (convolutions, then 2x2 pooling).
      channels=(32, 64, 128), convs_per_stage=1, hidden_size=256,
      # mlp_classifier: its hidden layers; the last one gives the features.
      hidden_sizes=(512, 256),
      # vit_classifier: the encoder keys of experiments/mae.py.
      **common.vit_encoder(variants),
      dropout_rate=0.3,
      # vit_classifier: stochastic depth, the last block's branches dropped
      # with this probability in training (0 at the first; linear between).
      drop_path_rate=0.0,
      conv_impl='auto',  # how convolutions run; see experiments/vae.py
      image_shape=config_dict.placeholder(tuple)))
  config.objective = ml_collections.ConfigDict(dict(
      name='cross_entropy',
      label_smoothing=0.1,
      # Training images are shifted by up to augment_pad pixels (0: none)
      # and mirrored left-right when augment_flip.
      augment_pad=2, augment_flip=True,
      # A classifier has no likelihood; these keys only complete the schema.
      **common.likelihood('bernoulli'),
  ))
  config.optimizer = common.optimizer(
      name='adamw', learning_rate=3e-3, schedule='cosine', warmup_steps=200,
      weight_decay=5e-4)
  config.eval = common.evaluation(extras=('classification',))
  if 'vit' in variants:
    config.optimizer.update(learning_rate=1e-3, weight_decay=0.05,
                            warmup_steps=steps_per_epoch)
  if 'layer_decay' in variants:
    config.optimizer.layer_decay = common.variant_value(
        variants, 'layer_decay', 0.75)
  if 'drop_path' in variants:
    config.model.drop_path_rate = common.variant_value(
        variants, 'drop_path', 0.1)
  if 'pretrained' in variants:
    config.init_from = common.variant_value(variants, 'pretrained', '')
    if not config.init_from:
      raise errors.ConfigError(
          'The pretrained variant needs the workdir to start from: '
          'experiments/classifier.py:vit,pretrained=W (W trained with '
          'experiments/mae.py).')

  if 'runlocal' in variants:
    common.runlocal(config)
    config.optimizer.warmup_steps = 5
    common.vit_encoder_runlocal(config.model)
  return config
