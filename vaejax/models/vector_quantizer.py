"""Vector quantisation of a grid of encoder outputs (VQ-VAE).

z_e(x) [..., D] is replaced by its nearest codebook vector
z_q = e_k, k = argmin_j ||z_e - e_j||^2, and the decoder sees
z_e + stop_gradient(z_q - z_e): z_q in the forward pass, the identity in
the backward pass (the straight-through estimator), so the reconstruction
gradient reaches the encoder. The codebook learns from the codebook term
||sg[z_e] - e_k||^2 and the encoder is held near its codes by the
commitment term beta * ||z_e - sg[e_k]||^2 (beta ~ 0.25); both are pure
functions here, per position, for the objective to weigh and reduce.

Reference: van den Oord, Vinyals, Kavukcuoglu 2017, "Neural Discrete
Representation Learning", section 3.2 and equation 3.
"""
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vaejax.objectives import vqvae as vqvae_objectives


def squared_distances(z, codebook):
  """||z - e_j||^2 for every code j: [..., D], [K, D] -> [..., K].

  Written as ||z||^2 - 2 z.e_j + ||e_j||^2, so the work is one [N, D] x
  [D, K] matmul rather than an [N, K, D] difference.
  """
  return (jnp.sum(jnp.square(z), axis=-1, keepdims=True)
          - 2.0 * z @ codebook.T + jnp.sum(jnp.square(codebook), axis=-1))


def nearest_codes(z, codebook):
  """The index of the nearest codebook vector of each z: [..., D] -> [...]."""
  return jnp.argmin(squared_distances(z, codebook), axis=-1)


def straight_through(z_e, z_q):
  """z_q in the forward pass, with the gradient of z_e: z_e + sg(z_q - z_e)."""
  return z_e + jax.lax.stop_gradient(z_q - z_e)


def codebook_loss(z_e, z_q):
  """||sg[z_e] - z_q||^2 per position (summed over D): moves the codes
  towards the encoder outputs assigned to them, not the encoder."""
  return jnp.sum(jnp.square(jax.lax.stop_gradient(z_e) - z_q), axis=-1)


def commitment_loss(z_e, z_q):
  """||z_e - sg[z_q]||^2 per position (summed over D): keeps the encoder
  near its codes (weighted by beta in the loss), not the codes."""
  return jnp.sum(jnp.square(z_e - jax.lax.stop_gradient(z_q)), axis=-1)


def _uniform_init(key, shape, dtype=jnp.float32):
  """U(-1/K, 1/K) for a [K, D] codebook."""
  return jax.random.uniform(key, shape, dtype, -1.0 / shape[0],
                            1.0 / shape[0])


class VectorQuantizer(nn.Module):
  """z_e [..., code_dim] -> dict(quantized, codes, codebook_vectors).

  `quantized` is the straight-through z_q for the decoder, `codes` the
  integer indices [...] (the grid a PixelCNN prior models),
  `codebook_vectors` z_q with its gradient to the codebook (for
  `codebook_loss`).

  With `codebook_collection='params'` the codebook is the parameter
  `codebook` [num_codes, code_dim], uniform in +-1/num_codes at init as in
  the paper's reference implementation, learned by the codebook loss. With
  another collection (`objectives.vqvae.EMA_COLLECTION`) it is not a
  gradient parameter: the collection holds the EMA statistics `counts` N
  [num_codes] (the fraction of positions assigned to each code) and `sums`
  m [num_codes, code_dim], and the codebook is derived from them,
  e_k = m_k / N~_k with Laplace-smoothed counts (`ema_epsilon`;
  `objectives.vqvae.smoothed_codebook`). Being means, the statistics
  average exactly over devices, like EM's.
  """
  num_codes: int
  code_dim: int
  codebook_init: Optional[Callable[..., Any]] = None
  codebook_collection: str = 'params'
  ema_epsilon: float = 1e-5

  def setup(self):
    init = self.codebook_init or _uniform_init
    shape = (self.num_codes, self.code_dim)
    if self.codebook_collection == 'params':
      self._codebook = self.param('codebook', init, shape)
      return
    # N_k = 1/K and m_k = e_k / K: the smoothed codebook starts at e.
    self.counts = self.variable(
        self.codebook_collection, 'counts',
        lambda: jnp.full((self.num_codes,), 1.0 / self.num_codes))
    self.sums = self.variable(
        self.codebook_collection, 'sums',
        lambda: init(self.make_rng('params'), shape) / self.num_codes)

  def codebook(self):
    """The codebook [num_codes, code_dim] the codes index."""
    if self.codebook_collection == 'params':
      return self._codebook
    return vqvae_objectives.smoothed_codebook(
        self.counts.value, self.sums.value, self.ema_epsilon)

  def __call__(self, z_e):
    if z_e.shape[-1] != self.code_dim:
      raise ValueError(f'VectorQuantizer: inputs have {z_e.shape[-1]} '
                       f'channels, the codebook {self.code_dim}.')
    codebook = self.codebook()
    z_e = z_e.astype(jnp.float32)
    codes = nearest_codes(z_e, codebook)
    z_q = jnp.take(codebook, codes, axis=0)
    return {'quantized': straight_through(z_e, z_q), 'codes': codes,
            'codebook_vectors': z_q}

  def embed_codes(self, codes):
    """Codes [...] -> codebook vectors [..., code_dim] (decoding sampled
    code grids)."""
    return jnp.take(self.codebook(), codes, axis=0)
