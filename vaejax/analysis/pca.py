"""Principal component analysis of feature matrices and of pixels.

`principal_axes` and `pca_project` for codes and pixel baselines (the
clustering evaluations project pixels to a few dozen components);
`fit_pca` gives the fitted projection of uint8 images used as first-stage
features (`vaejax.stages`, `experiments/gmm.py`).
"""
import dataclasses

import numpy as np


def flatten_features(features):
  """[N, ...] -> float32 [N, D]: codes or images as one vector each."""
  features = np.asarray(features, np.float32)
  return features.reshape(len(features), -1)


def principal_axes(features, num_components, dtype=np.float64):
  """(mean [D], components [D, K]) of [N, ...] features, largest variance
  first, K = min(num_components, D).

  The axes are eigenvectors of the D x D covariance (accumulated in `dtype`,
  float32 halving the memory for large data; decomposed in float64):
  cheaper than an SVD of the N x D data. Each axis's sign makes its largest
  loading positive, so the same features always give the same projection.
  """
  features = flatten_features(features).astype(dtype)
  mean = features.mean(axis=0)
  centred = features - mean
  eigenvalues, eigenvectors = np.linalg.eigh(
      (centred.T @ centred).astype(np.float64))
  components = eigenvectors[:, np.argsort(eigenvalues)[::-1][:num_components]]
  largest = np.argmax(np.abs(components), axis=0)
  components *= np.sign(components[largest, np.arange(components.shape[1])])
  return mean, components


def pca_project(features, num_components):
  """float32 [N, K]: features projected on their own top principal axes."""
  mean, components = principal_axes(features, num_components)
  centred = flatten_features(features).astype(np.float64) - mean
  return (centred @ components).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class PCA:
  """x -> (x - mean) @ components for pixel vectors x in [0, 1]."""
  mean: np.ndarray  # [P]
  components: np.ndarray  # [P, D], orthonormal columns.

  def __call__(self, images):
    pixels = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return ((pixels - self.mean) @ self.components).astype(np.float32)


def fit_pca(images, num_components):
  """Principal axes of the pixels of `images`, largest variance first.

  `principal_axes` with the P x P covariance accumulated in float32
  (half the memory of float64 for 60k x 784 pixels); decomposed in float64
  with signs fixed, so the features are reproducible.
  """
  pixels = images.reshape(len(images), -1).astype(np.float32) / 255.0
  if not 0 < num_components <= min(pixels.shape):
    raise ValueError(
        f'num_components={num_components} must be between 1 and '
        f'{min(pixels.shape)} (the number of pixels and of examples).')
  mean, components = principal_axes(pixels, num_components,
                                           dtype=np.float32)
  return PCA(mean, components.astype(np.float32))
