"""Sample-quality metrics between two sets of feature vectors: Fréchet
distance, kernel distance (KID) and precision / recall.

Pure NumPy functions of feature matrices [N, D] (the penultimate layer of a
fixed classifier, `vaejax.evaluators.sample_quality`); float64 throughout.

References:
  Heusel et al., "GANs trained by a two time-scale update rule converge to a
    local Nash equilibrium" (NeurIPS 2017): the Fréchet (Inception) distance.
  Bińkowski et al., "Demystifying MMD GANs" (ICLR 2018): the unbiased kernel
    (Inception) distance with a cubic polynomial kernel.
  Kynkäänniemi et al., "Improved precision and recall metric for assessing
    generative models" (NeurIPS 2019): k-NN manifolds.
"""
import numpy as np


def mean_and_covariance(features):
  """The mean [D] and (unbiased) covariance [D, D] of `features` [N, D]."""
  features = np.asarray(features, np.float64)
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _symmetric_sqrt(matrix):
  """The PSD square root of a symmetric matrix (negative eigenvalues from
  rounding are clipped to 0)."""
  eigenvalues, eigenvectors = np.linalg.eigh(matrix)
  return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))
          ) @ eigenvectors.T


def frechet_distance(mean_a, cov_a, mean_b, cov_b):
  """‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2}).

  Args:
    mean_a, mean_b: [D] means; cov_a, cov_b: [D, D] covariances (symmetric
      PSD).

  Returns:
    The squared Fréchet (2-Wasserstein) distance between N(μ_a, Σ_a) and
    N(μ_b, Σ_b), a float >= 0.

  tr (Σ_a Σ_b)^{1/2} is the sum of the square roots of the eigenvalues of
  Σ_a Σ_b, which are those of the symmetric PSD S Σ_b S with S = Σ_a^{1/2}:
  two symmetric eigendecompositions instead of a general matrix square root
  (scipy.linalg.sqrtm), which can return complex values from rounding.
  """
  mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b,
                                                              np.float64)
  cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
  root_a = _symmetric_sqrt(cov_a)
  product = root_a @ cov_b @ root_a
  product = (product + product.T) / 2
  trace_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(product), 0.0,
                                      None)))
  distance = (np.sum(np.square(mean_a - mean_b)) + np.trace(cov_a)
              + np.trace(cov_b) - 2.0 * trace_sqrt)
  return float(max(distance, 0.0))


def frechet_distance_of_features(features_a, features_b):
  """`frechet_distance` of the Gaussians fitted to two feature sets."""
  return frechet_distance(*mean_and_covariance(features_a),
                          *mean_and_covariance(features_b))


def polynomial_kernel(a, b):
  """k(a, b) = (a·b / D + 1)³ for rows of a [N, D] and b [M, D] -> [N, M]."""
  return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd_squared_unbiased(a, b):
  """The unbiased estimate of MMD² with `polynomial_kernel` between the
  samples a [m, D] and b [n, D] (the within-set sums leave out i = j)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  m, n = len(a), len(b)
  k_aa, k_bb = polynomial_kernel(a, a), polynomial_kernel(b, b)
  within_a = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
  within_b = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
  return float(within_a + within_b - 2.0 * polynomial_kernel(a, b).mean())


def kernel_distance(features_a, features_b, num_subsets, subset_size, seed=0):
  """KID: the mean and standard deviation of `mmd_squared_unbiased` over
  `num_subsets` pairs of random subsets (without replacement within a
  subset) of `subset_size` rows of each set, as Bińkowski et al. report it.

  `subset_size` is capped at the size of the smaller set. The subsets come
  from `seed`, so the numbers are reproducible. Unbiased: its expectation
  is 0 for two samples of one distribution, so it can be negative.

  Returns:
    (mean, standard deviation) over the subsets.
  """
  rng = np.random.default_rng(seed)
  size = min(subset_size, len(features_a), len(features_b))
  values = [
      mmd_squared_unbiased(
          features_a[rng.choice(len(features_a), size, replace=False)],
          features_b[rng.choice(len(features_b), size, replace=False)])
      for _ in range(num_subsets)]
  return float(np.mean(values)), float(np.std(values))


def _squared_distances(a, b):
  """‖a_i − b_j‖² [N, M], clipped at 0."""
  return np.maximum(np.sum(a * a, axis=1)[:, None] + np.sum(b * b, axis=1)
                    - 2.0 * a @ b.T, 0.0)


def knn_radii(features, k, chunk_size=1000):
  """The squared distance from each row of `features` [N, D] to its k-th
  nearest other row [N] (the radius of its ball in the k-NN manifold)."""
  features = np.asarray(features, np.float64)
  radii = []
  for start in range(0, len(features), chunk_size):
    distances = _squared_distances(features[start:start + chunk_size],
                                   features)
    # Position 0 of each sorted row is the row itself (distance 0).
    radii.append(np.partition(distances, k, axis=1)[:, k])
  return np.concatenate(radii)


def fraction_in_manifold(points, manifold, radii, chunk_size=1000):
  """The fraction of `points` [N, D] inside the union of the balls around
  the rows of `manifold` [M, D] with squared radii `radii` [M]."""
  points = np.asarray(points, np.float64)
  manifold = np.asarray(manifold, np.float64)
  inside = [np.any(_squared_distances(points[start:start + chunk_size],
                                      manifold) <= radii, axis=1)
            for start in range(0, len(points), chunk_size)]
  return float(np.mean(np.concatenate(inside)))


def precision_recall(real, generated, k=3):
  """Improved precision and recall (Kynkäänniemi et al., 2019).

  Precision: the fraction of `generated` rows inside the k-NN manifold of
  `real` (the union of balls around each real row reaching its k-th nearest
  real neighbour); recall: the fraction of `real` rows inside the k-NN
  manifold of `generated`. Both are 1 for identical sets and near 0 for
  sets far apart.

  Returns:
    (precision, recall).
  """
  precision = fraction_in_manifold(generated, real, knn_radii(real, k))
  recall = fraction_in_manifold(real, generated, knn_radii(generated, k))
  return precision, recall


def sample_quality(real, generated, num_subsets, subset_size, k, seed=0):
  """{'fid', 'kid', 'kid_std', 'precision', 'recall'} of `generated`
  against `real` feature vectors."""
  kid, kid_std = kernel_distance(real, generated, num_subsets, subset_size,
                                 seed)
  precision, recall = precision_recall(real, generated, k)
  return {'fid': frechet_distance_of_features(real, generated), 'kid': kid,
          'kid_std': kid_std, 'precision': precision, 'recall': recall}
