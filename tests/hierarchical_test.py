"""vaejax/models/hierarchical.py: the top-down block and its KL
(objectives/distributions.py residual_gaussian_kl)."""
import jax
import jax.numpy as jnp
import numpy as np

from vaejax.models import hierarchical
from vaejax.objectives import distributions


def test_residual_kl_matches_the_kl_of_the_two_gaussians():
  """Against KL(N(m_q, v_q) || N(m_p, v_p)) written with both means and
  variances, and a Monte-Carlo estimate; zero when q copies p."""
  keys = jax.random.split(jax.random.key(0), 4)
  delta_mean, delta_logvar, prior_mean, prior_logvar = (
      0.7 * jax.random.normal(k, (5,)) for k in keys)
  kl = distributions.residual_gaussian_kl(delta_mean, delta_logvar,
                                         prior_logvar)
  m_p, v_p = np.float64(prior_mean), np.exp(np.float64(prior_logvar))
  m_q = m_p + np.float64(delta_mean)
  v_q = v_p * np.exp(np.float64(delta_logvar))
  closed_form = 0.5 * (np.log(v_p / v_q) + (v_q + (m_q - m_p) ** 2) / v_p
                       - 1)
  np.testing.assert_allclose(kl, closed_form, rtol=1e-5, atol=1e-6)
  z = m_q + np.sqrt(v_q) * np.random.default_rng(0).standard_normal(
      (200_000, 5))
  log_q = -0.5 * (np.log(v_q) + (z - m_q) ** 2 / v_q)
  log_p = -0.5 * (np.log(v_p) + (z - m_p) ** 2 / v_p)
  np.testing.assert_allclose(kl, (log_q - log_p).mean(0), atol=0.02)
  np.testing.assert_array_equal(
      distributions.residual_gaussian_kl(jnp.zeros(3), jnp.zeros(3),
                                        jnp.ones(3)), 0.0)


def _block():
  return hierarchical.TopDownBlock(features=8, bottleneck=4,
                                   latent_channels=3)


def test_top_down_block_shapes_and_its_kl_for_posterior_equal_prior():
  h = jax.random.normal(jax.random.key(0), (2, 4, 5, 8))
  bottom_up = jax.random.normal(jax.random.key(1), (2, 4, 5, 6))
  block = _block()
  variables = block.init(jax.random.key(2), h, bottom_up, jax.random.key(3))
  h_out, kl, z = block.apply(variables, h, bottom_up, jax.random.key(3))
  assert h_out.shape == h.shape and kl.shape == z.shape == (2, 4, 5, 3)
  assert float(kl.min()) >= 0
  # With the posterior's last convolution zeroed, q = p: the KL is zero and
  # z is the prior's sample with the same noise.
  params = jax.tree_util.tree_map(lambda a: a, variables['params'])
  params['posterior']['conv_out'] = jax.tree.map(
      jnp.zeros_like, params['posterior']['conv_out'])
  h_q, kl_q, z_q = block.apply({'params': params}, h, bottom_up,
                               jax.random.key(3))
  np.testing.assert_array_equal(kl_q, 0.0)
  h_p, kl_p, z_p = block.apply({'params': params}, h, None, jax.random.key(3))
  assert kl_p is None
  np.testing.assert_allclose(z_p, z_q, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(h_p, h_q, rtol=1e-6, atol=1e-6)


def test_kl_gradient_reaches_the_posterior_and_the_prior():
  h = jax.random.normal(jax.random.key(0), (1, 3, 3, 8))
  bottom_up = jax.random.normal(jax.random.key(1), (1, 3, 3, 2))
  block = _block()
  variables = block.init(jax.random.key(2), h, bottom_up, jax.random.key(3))

  def total_kl(params):
    return jnp.sum(block.apply({'params': params}, h, bottom_up,
                               jax.random.key(3))[1])

  grads = jax.grad(total_kl)(variables['params'])
  for name in ('posterior', 'prior'):
    norm = sum(float(jnp.sum(jnp.square(g)))
               for g in jax.tree.leaves(grads[name]))
    assert norm > 0, name
  # The residual block after the sample does not touch the KL.
  np.testing.assert_array_equal(
      jax.tree.leaves(jax.tree.map(jnp.abs, grads['residual']))[0], 0.0)
