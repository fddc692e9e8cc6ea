r"""Gaussian mixtures fitted by EM on Fashion-MNIST features.

  python -m vaejax.main --config experiments/gmm.py --workdir workdirs/gmm

Each train step is one EM iteration on the whole training set (batch_size =
number of training examples), through the one train loop: the model's state
is the sufficient statistics of the last E-step, pooled over devices; the
loss is the mean negative log-likelihood, which never increases.

Variants, comma-separated after a colon and combinable:
  features=pca        PCA of the pixels to `feature_dim` = 50 dims (default)
  features=vae        latent means of a trained VAE; needs workdir=<path>
  workdir=<path>      the workdir of that VAE (experiments/vae.py)
  covariance=diag     diagonal covariances (default)
  covariance=full     full covariances
  classifier          the Gaussian-mixture linear classifier instead, on
                      tops (T-shirt, pullover, coat, shirt) vs the rest,
                      compared with a single logistic regression
  runlocal            a few EM iterations: finishes in seconds

  python -m vaejax.main --config experiments/gmm.py:covariance=full \
      --workdir workdirs/gmm_full
  python -m vaejax.main \
      --config experiments/gmm.py:features=vae,workdir=workdirs/vae \
      --workdir workdirs/gmm_vae
  python -m vaejax.main --config experiments/gmm.py:classifier --workdir W

Measured on Fashion-MNIST (10 components, 100 EM iterations, 2-core CPU):
cluster accuracy on the test / training split (eval/cluster_accuracy,
cluster_accuracy_train; k-means on the training features for comparison),
and the classifier's test accuracy (logistic regression on the same features):

  PCA-50 (default)   diag GMM     0.492 / 0.495   (k-means 0.501)
  PCA-50             full GMM     0.515 / 0.516
  PCA-50             classifier   0.962           (logistic regression 0.945)
  VAE latents (20-d, experiments/vae.py stopped after 3000 steps):
                     diag GMM     0.603 / 0.599   (k-means 0.579)
                     full GMM     0.639 / 0.648
                     classifier   0.953           (logistic regression 0.911)
"""
import ml_collections
from ml_collections import config_dict

from vaejax import errors
from vaejax.configs import common

KNOWN_VARIANTS = ('features', 'workdir', 'covariance', 'classifier',
                  'runlocal')
FEATURE_EXTRACTORS = {'pca': 'pca', 'vae': 'vae_latents'}
NUM_TRAIN_EXAMPLES = 60_000
TOPS = (0, 2, 4, 6)  # T-shirt/top, Pullover, Coat, Shirt.


def get_config(arg=None):
  variants = common.parse_variants(arg, KNOWN_VARIANTS, 'experiments/gmm.py')
  features = variants.get('features', 'pca')
  if features not in FEATURE_EXTRACTORS:
    raise errors.ConfigError(
        f'Unknown features={features} in experiments/gmm.py:{arg}. Known: '
        f'{", ".join(FEATURE_EXTRACTORS)}.')
  if features == 'vae' and 'workdir' not in variants:
    raise errors.ConfigError(
        'experiments/gmm.py:features=vae needs workdir=<the workdir of a '
        'trained VAE>, e.g. experiments/gmm.py:features=vae,workdir=W.')

  config = ml_collections.ConfigDict()
  # Full-batch EM: one step is one EM iteration over every training example.
  # A smaller batch would run EM on each minibatch in turn, which is not EM.
  common.training(config, batch_size=NUM_TRAIN_EXAMPLES, num_train_steps=100,
                  eval_every=0, steps_per_dispatch=10, log_every=10,
                  checkpoint_every=50, checkpoints_to_keep=2)
  config.data = common.data(
      variants, 'features', features=FEATURE_EXTRACTORS[features],
      features_workdir=variants.get('workdir'))

  config.model = ml_collections.ConfigDict(dict(
      name='gaussian_mixture', num_components=10,
      covariance_type=variants.get('covariance', 'diag'), reg_covar=1e-6,
      image_shape=config_dict.placeholder(tuple)))
  config.objective = ml_collections.ConfigDict(dict(
      name='em_gmm',
      # The mixture is its own likelihood; these keys only complete the
      # schema.
      **common.likelihood('gaussian'),
  ))
  if 'classifier' in variants:
    config.model.name = 'mixture_classifier'
    config.objective.name = 'em_mixture_classifier'
    config.objective.positive_classes = TOPS
    config.objective.gradient_steps_per_m_step = 10
    config.objective.label_learning_rate = 0.05

  # EM has no gradient parameters: the optimiser updates an empty tree.
  config.optimizer = common.optimizer(name='sgd', learning_rate=0.0,
                                      momentum=0.0)
  config.eval = common.evaluation(
      batch_size=1000,
      extras=(('mixture_classifier_accuracy',) if 'classifier' in variants
              else ('mixture_cluster_accuracy',)))

  if 'runlocal' in variants:
    config.num_train_steps = 10
    config.log_every = 5
    config.checkpoint_every = 10
  return config
