"""vaejax/models/vector_quantizer.py: nearest codes, straight-through
gradients, the codebook and commitment terms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaejax.models import vector_quantizer as vq


def _inputs(shape=(2, 3, 4, 6), num_codes=7):
  z_e = jax.random.normal(jax.random.key(0), shape)
  codebook = jax.random.normal(jax.random.key(1), (num_codes, shape[-1]))
  return z_e, codebook


def test_nearest_codes_match_a_brute_force_search():
  z_e, codebook = _inputs()
  z, e = np.asarray(z_e, np.float64), np.asarray(codebook, np.float64)
  distances = ((z[..., None, :] - e) ** 2).sum(-1)
  np.testing.assert_allclose(vq.squared_distances(z_e, codebook), distances,
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(vq.nearest_codes(z_e, codebook),
                                distances.argmin(-1))


def test_layer_returns_the_nearest_codebook_vectors():
  z_e, _ = _inputs()
  layer = vq.VectorQuantizer(num_codes=7, code_dim=6)
  variables = layer.init(jax.random.key(2), z_e)
  codebook = variables['params']['codebook']
  assert codebook.shape == (7, 6)
  assert float(jnp.abs(codebook).max()) <= 1.0 / 7
  out = layer.apply(variables, z_e)
  codes = vq.nearest_codes(z_e, codebook)
  np.testing.assert_array_equal(out['codes'], codes)
  np.testing.assert_array_equal(out['codebook_vectors'], codebook[codes])
  np.testing.assert_allclose(out['quantized'], codebook[codes], atol=1e-6)
  np.testing.assert_array_equal(
      layer.apply(variables, codes, method=layer.embed_codes),
      codebook[codes])
  with pytest.raises(ValueError, match='5 channels'):
    layer.apply(variables, z_e[..., :5])


def test_straight_through_passes_the_decoder_gradient_to_the_encoder():
  """d f(st(z_e, z_q)) / d z_e = f'(z_q): the gradient at the quantised
  point, unchanged; none reaches z_q."""
  z_e, codebook = _inputs()
  z_q = codebook[vq.nearest_codes(z_e, codebook)]

  def f(v):
    return jnp.sum(jnp.sin(v) * jnp.arange(v.shape[-1]))

  grad_e, grad_q = jax.grad(lambda e, q: f(vq.straight_through(e, q)),
                            argnums=(0, 1))(z_e, z_q)
  np.testing.assert_allclose(grad_e, jax.grad(f)(z_q), rtol=1e-6)
  np.testing.assert_array_equal(grad_q, 0.0)
  np.testing.assert_allclose(vq.straight_through(z_e, z_q), z_q, atol=1e-6)


def test_codebook_and_commitment_terms_move_only_their_own_side():
  z_e, codebook = _inputs()
  codes = vq.nearest_codes(z_e, codebook)

  def terms(z_e, codebook):
    z_q = jnp.take(codebook, codes, axis=0)
    return vq.codebook_loss(z_e, z_q), vq.commitment_loss(z_e, z_q)

  codebook_term, commitment_term = terms(z_e, codebook)
  expected = np.sum((np.asarray(z_e) - np.asarray(codebook)[codes]) ** 2, -1)
  np.testing.assert_allclose(codebook_term, expected, rtol=1e-5)
  np.testing.assert_allclose(commitment_term, expected, rtol=1e-5)
  d_codebook = jax.grad(lambda e, c: jnp.sum(terms(e, c)[0]),
                        argnums=(0, 1))(z_e, codebook)
  d_commitment = jax.grad(lambda e, c: jnp.sum(terms(e, c)[1]),
                          argnums=(0, 1))(z_e, codebook)
  np.testing.assert_array_equal(d_codebook[0], 0.0)
  np.testing.assert_array_equal(d_commitment[1], 0.0)
  # d/de_k sum ||z_e - e_k||^2 = -2 sum over the positions assigned to k.
  flat_z, flat_codes = np.asarray(z_e).reshape(-1, 6), np.asarray(codes).ravel()
  for k in range(codebook.shape[0]):
    assigned = flat_z[flat_codes == k]
    np.testing.assert_allclose(
        d_codebook[1][k],
        -2.0 * (assigned - np.asarray(codebook[k])).sum(0), rtol=1e-4,
        atol=1e-5)
  np.testing.assert_allclose(d_commitment[0],
                             2.0 * (z_e - codebook[codes]), rtol=1e-5)
