"""vaejax/models/pixelcnn.py: masks, masked convolutions, causality."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vaejax.models import pixelcnn


def test_raster_masks_keep_the_positions_before_the_centre():
  np.testing.assert_array_equal(
      pixelcnn.raster_mask((3, 3), 'A'), [[1, 1, 1], [1, 0, 0], [0, 0, 0]])
  np.testing.assert_array_equal(
      pixelcnn.raster_mask((3, 5), 'B'),
      [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(pixelcnn.vertical_mask(3, 'A')[:, 0],
                                [1, 0, 0])
  np.testing.assert_array_equal(pixelcnn.horizontal_mask(5, 'B'),
                                [[1, 1, 1, 0, 0]])
  with pytest.raises(ValueError, match="mask_type='C'"):
    pixelcnn.raster_mask((3, 3), 'C')


@pytest.mark.parametrize('mask', [
    pixelcnn.raster_mask((5, 5), 'A'), pixelcnn.raster_mask((3, 3), 'B'),
    pixelcnn.vertical_mask(3, 'A'), pixelcnn.vertical_mask(5, 'B'),
    pixelcnn.horizontal_mask(3, 'A'), pixelcnn.horizontal_mask(3, 'B')])
@pytest.mark.parametrize('impl', ['lax', 'matmul'])
def test_masked_conv_is_a_same_conv_with_the_masked_kernel(mask, impl):
  """The kernel parameter is the mask's bounding box; placed back into a
  full zero kernel it gives lax's 'SAME' convolution, outputs and input
  gradients."""
  x = jax.random.normal(jax.random.key(0), (2, 6, 7, 3))
  module = pixelcnn.MaskedConv(4, mask, conv_impl=impl)
  variables = module.init(jax.random.key(1), x)
  box = variables['params']['kernel']
  rows, cols = np.nonzero(mask)
  assert box.shape == (rows.max() - rows.min() + 1,
                       cols.max() - cols.min() + 1, 3, 4)
  full = jnp.zeros((*mask.shape, 3, 4)).at[
      rows.min():rows.max() + 1, cols.min():cols.max() + 1].set(box)
  full = full * mask[:, :, None, None]
  bias = variables['params']['bias']

  def reference(x):
    return lax.conv_general_dilated(
        x, full, (1, 1), 'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + bias

  def loss(f, x):
    return jnp.sum(jnp.sin(f(x)))

  np.testing.assert_allclose(module.apply(variables, x), reference(x),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      jax.grad(lambda x: loss(lambda x: module.apply(variables, x), x))(x),
      jax.grad(lambda x: loss(reference, x))(x), rtol=1e-5, atol=1e-5)


def _network(**kwargs):
  return pixelcnn.GatedPixelCNN(num_codes=5, features=8, num_layers=3,
                                first_kernel_size=5, output_features=16,
                                **kwargs)


def test_logits_at_a_position_depend_only_on_earlier_positions():
  """d logits[i] / d input[j] is zero for every j >= i in raster order, and
  nonzero for the neighbours before i: checked at every position of a 5x6
  grid, with the 3-layer net's gradients."""
  height, width = 5, 6
  model = _network()
  codes = jax.random.randint(jax.random.key(0), (1, height, width), 0, 5)
  variables = model.init(jax.random.key(1), codes)
  embeddings = model.apply(variables, codes,
                           method=lambda m, c: m.embedding(c))

  def logits_at(embeddings, i, j):
    logits = model.apply(variables, embeddings,
                         method=model.logits_of_embeddings)
    return jnp.sum(logits[0, i, j])

  gradient = jax.jit(jax.grad(logits_at), static_argnums=(1, 2))
  for i in range(height):
    for j in range(width):
      influence = np.abs(np.asarray(gradient(embeddings, i, j))[0]).sum(-1)
      position = i * width + j
      order = np.arange(height * width).reshape(height, width)
      assert np.all(influence[order >= position] == 0), (i, j)
      # The position to the left and the one above are always in view (the
      # end of the previous row need not be: the receptive field widens
      # by kernel_size // 2 columns per layer).
      if j > 0:
        assert influence[i, j - 1] > 0, (i, j)
      if i > 0:
        assert influence[i - 1, j] > 0, (i, j)


def test_class_conditioning_changes_the_logits_and_keeps_the_shape():
  model = _network(num_classes=3)
  codes = jax.random.randint(jax.random.key(0), (2, 4, 4), 0, 5)
  labels = jnp.array([0, 2])
  variables = model.init(jax.random.key(1), codes, labels)
  logits = model.apply(variables, codes, labels)
  assert logits.shape == (2, 4, 4, 5)
  # The class bias starts random (nn.Embed's init): another label moves
  # every position's logits, including the first one, which sees no code.
  other = model.apply(variables, codes, jnp.array([1, 1]))
  assert float(jnp.min(jnp.abs(logits - other).sum(-1))) > 0
  with pytest.raises(ValueError, match='needs labels'):
    model.apply(variables, codes)


@pytest.mark.parametrize('impl', ['lax', 'matmul'])
def test_network_gives_the_same_logits_with_either_conv_impl(impl):
  codes = jax.random.randint(jax.random.key(0), (2, 4, 5), 0, 5)
  reference = _network(conv_impl='lax')
  variables = reference.init(jax.random.key(1), codes)
  np.testing.assert_allclose(_network(conv_impl=impl).apply(variables, codes),
                             reference.apply(variables, codes),
                             rtol=1e-5, atol=1e-5)
