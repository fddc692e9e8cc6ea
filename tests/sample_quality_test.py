"""Sample-quality metrics (vaejax/analysis/sample_quality.py) against
closed forms and an independent SciPy computation."""
import numpy as np
import pytest
import scipy.linalg

from vaejax.analysis import sample_quality as quality


def scipy_frechet_distance(mean_a, cov_a, mean_b, cov_b):
  """The textbook formula with scipy's general matrix square root."""
  root = scipy.linalg.sqrtm(cov_a @ cov_b)
  return float(np.sum((mean_a - mean_b) ** 2)
               + np.trace(cov_a + cov_b - 2 * np.real(root)))


def random_covariance(rng, dim):
  factor = rng.normal(size=(dim, dim))
  return factor @ factor.T / dim + 0.1 * np.eye(dim)


def test_frechet_distance_of_a_set_to_itself_is_zero():
  features = np.random.default_rng(0).normal(size=(500, 16))
  assert quality.frechet_distance_of_features(features, features) == (
      pytest.approx(0.0, abs=1e-9))


def test_frechet_distance_closed_form_for_diagonal_covariances():
  """Diagonal (commuting) covariances: ‖Δμ‖² + Σ_j (σ_a,j − σ_b,j)²."""
  rng = np.random.default_rng(1)
  mean_a, mean_b = rng.normal(size=8), rng.normal(size=8)
  var_a, var_b = rng.uniform(0.1, 3, 8), rng.uniform(0.1, 3, 8)
  expected = (np.sum((mean_a - mean_b) ** 2)
              + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2))
  assert quality.frechet_distance(mean_a, np.diag(var_a), mean_b,
                                  np.diag(var_b)) == pytest.approx(
                                      expected, rel=1e-10)


@pytest.mark.parametrize('dim', [2, 10, 64])
def test_frechet_distance_matches_scipy_sqrtm(dim):
  rng = np.random.default_rng(dim)
  mean_a, mean_b = rng.normal(size=dim), rng.normal(size=dim)
  cov_a, cov_b = random_covariance(rng, dim), random_covariance(rng, dim)
  ours = quality.frechet_distance(mean_a, cov_a, mean_b, cov_b)
  assert ours == pytest.approx(
      scipy_frechet_distance(mean_a, cov_a, mean_b, cov_b), rel=1e-8)
  # Symmetric in its arguments.
  assert ours == pytest.approx(
      quality.frechet_distance(mean_b, cov_b, mean_a, cov_a), rel=1e-8)


def test_frechet_distance_of_samples_approaches_the_gaussians():
  """Samples of N(μ_a, Σ_a) and N(μ_b, Σ_b): the estimate from 200,000
  draws is close to the exact distance."""
  rng = np.random.default_rng(3)
  dim = 4
  mean_a, mean_b = np.zeros(dim), np.full(dim, 0.5)
  cov_a, cov_b = random_covariance(rng, dim), random_covariance(rng, dim)
  a = rng.multivariate_normal(mean_a, cov_a, 200_000)
  b = rng.multivariate_normal(mean_b, cov_b, 200_000)
  exact = scipy_frechet_distance(mean_a, cov_a, mean_b, cov_b)
  assert quality.frechet_distance_of_features(a, b) == pytest.approx(
      exact, rel=0.02)


def test_mmd_matches_an_explicit_double_sum():
  rng = np.random.default_rng(4)
  a, b = rng.normal(size=(7, 3)), rng.normal(1.0, 1.0, size=(5, 3))

  def k(x, y):
    return (x @ y / 3 + 1) ** 3

  within_a = sum(k(a[i], a[j]) for i in range(7) for j in range(7)
                 if i != j) / (7 * 6)
  within_b = sum(k(b[i], b[j]) for i in range(5) for j in range(5)
                 if i != j) / (5 * 4)
  across = sum(k(x, y) for x in a for y in b) / 35
  assert quality.mmd_squared_unbiased(a, b) == pytest.approx(
      within_a + within_b - 2 * across, rel=1e-10)


def test_kid_is_unbiased_for_one_distribution():
  """The mean of the unbiased MMD² over many pairs of independent samples
  of one distribution is 0 within three standard errors (a biased V-
  statistic would be positive by about 1/m of the kernel's variance)."""
  rng = np.random.default_rng(5)
  values = [quality.mmd_squared_unbiased(rng.normal(size=(50, 8)),
                                         rng.normal(size=(50, 8)))
            for _ in range(400)]
  standard_error = np.std(values) / np.sqrt(len(values))
  assert abs(np.mean(values)) < 3 * standard_error
  # Two different distributions: clearly positive.
  shifted = quality.kernel_distance(rng.normal(size=(500, 8)),
                                    rng.normal(0.5, 1.0, size=(500, 8)),
                                    num_subsets=10, subset_size=100)
  assert shifted[0] > 10 * shifted[1] / np.sqrt(10)


def test_kernel_distance_is_reproducible_and_caps_the_subset_size():
  rng = np.random.default_rng(6)
  a, b = rng.normal(size=(40, 4)), rng.normal(size=(30, 4))
  first = quality.kernel_distance(a, b, num_subsets=5, subset_size=1000)
  assert first == quality.kernel_distance(a, b, num_subsets=5,
                                          subset_size=1000)
  # With subsets as large as the smaller set, b's subsets are all of b.
  assert np.isfinite(first).all() and first[1] >= 0


def test_precision_recall_identical_and_disjoint_sets():
  rng = np.random.default_rng(7)
  real = rng.normal(size=(300, 5))
  assert quality.precision_recall(real, real.copy(), k=3) == (1.0, 1.0)
  far = rng.normal(size=(300, 5)) + 20.0
  assert quality.precision_recall(real, far, k=3) == (0.0, 0.0)
  # Samples from a narrow part of the real distribution: precise but
  # without recall.
  narrow = rng.normal(scale=0.2, size=(300, 5))
  precision, recall = quality.precision_recall(real, narrow, k=3)
  assert precision > 0.9 and recall < 0.5


def test_knn_radii_against_brute_force():
  rng = np.random.default_rng(8)
  features = rng.normal(size=(50, 3))
  distances = np.sum((features[:, None] - features[None]) ** 2, axis=-1)
  expected = np.sort(distances, axis=1)[:, 3]
  np.testing.assert_allclose(quality.knn_radii(features, 3, chunk_size=7),
                             expected, rtol=1e-10, atol=1e-12)
